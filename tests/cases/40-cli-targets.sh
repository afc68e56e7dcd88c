#!/bin/bash
# Which tables fleece duplicates:
#  1. log-writes is refused (a second instance would write over the first
#     one's log), nothing changed;
#  2. crypt with its key in the table is fleeced: the view holds the
#     plaintext of the point in time, stop puts the table back;
#  3. crypt with its key in the kernel keyring (LUKS2's default; cryptsetup
#     unlinks that key once the device is active) is refused;
#  4. status -q is accepted, as every command's -q;
#  5. real LUKS2 volumes opened by cryptsetup: with its default (the key in
#     the keyring) refused, nothing changed; opened with --disable-keyring
#     (the key in the table) fleeced, the view byte for byte the point in
#     time's plaintext.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
base=$(mkdev base 16)
logd=$(mkdev logd 16 2)
fl=$(mkdev fl 16 1)
mkpattern pat 16 pat
mkpattern new 1 new

refused() { # dm-name message-glob what
	local t
	t=$(dmsetup table --showkeys "$1")
	expect_exit 3 $F start --fleece-dev "$fl" "$1"
	echo "$T_ERR"
	[[ $T_ERR == $2 ]] || fail "$3: not the reason expected ($2): $T_ERR"
	assert_eq "$(dmsetup table --showkeys "$1")" "$t" "$3: the table"
	no_fleece_devices
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$3: state left"
}

step "1. log-writes is refused"
modprobe dm-log-writes
dmsetup create lw --table "0 32768 log-writes $base $logd"
refused lw "*its table has a 'log-writes' target, which fleece cannot duplicate safely*" "log-writes"
dmsetup remove lw

step "2. crypt with its key in the table"
modprobe dm-crypt
key=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
dmsetup create cr --table "0 32768 crypt aes-xts-plain64 $key 0 $base 0"
ctable=$(dmsetup table --showkeys cr)
put pat /dev/mapper/cr
$F start -q --fleece-dev "$fl" cr
dmsetup table cr | grep -q " fleece " || fail "cr is not fleeced"
put new /dev/mapper/cr
same /dev/mapper/cr-fleece-view pat "the view of the crypt device"

step "4. status -q"
$F status -q cr > status.out || fail "status -q: exit $?"
grep -q "^cr: active" status.out || fail "status -q printed no report: $(cat status.out)"
$F stop -q cr
assert_eq "$(dmsetup table --showkeys cr)" "$ctable" "cr's table after stop"
cmp <(head -c 1M /dev/mapper/cr) new || fail "cr lost what was written during the fleece"
dmsetup remove cr

step "3. crypt with its key in the kernel keyring"
# A logon key, as cryptsetup loads a LUKS2 volume key (no keyctl here).
python3 - <<'PY' || fail "cannot add a key to the user keyring"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
key = os.urandom(64)
# add_key("logon", "fleece:test", key, 64, KEY_SPEC_USER_KEYRING)
r = libc.syscall(ctypes.c_long(248), b"logon", b"fleece:test", key, ctypes.c_size_t(len(key)),
                 ctypes.c_long(-4))
if r < 0:
    raise SystemExit("add_key: %s" % os.strerror(ctypes.get_errno()))
PY
dmsetup create crk --table "0 32768 crypt aes-xts-plain64 :64:logon:fleece:test 0 $base 0" ||
	fail "dm-crypt does not take the keyring key"
refused crk "*its crypt target takes its key from the kernel keyring*" "crypt, keyring key"
dmsetup remove crk

step "5. LUKS2 volumes opened by cryptsetup"
command -v cryptsetup > /dev/null || fail "cryptsetup is not in the guest (cryptsetup-bin, tests/vm/deps.sh)"
# pbkdf2 with few iterations: argon2's memory cost is not what is tested.
lbase=$(mkdev lbase 24)	# LUKS2's default header takes 16 MiB of it
printf 'fleece-test' > luks.pass
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
	--key-file luks.pass "$lbase" || fail "luksFormat: exit $?"
cryptsetup open --key-file luks.pass "$lbase" lk || fail "cryptsetup open: exit $?"
dmsetup table lk | grep -q ' crypt .* :[0-9]*:logon:' ||
	fail "cryptsetup did not put its key in the keyring: $(dmsetup table lk)"
refused lk "*its crypt target takes its key from the kernel keyring*cryptsetup open --disable-keyring to fleece it*" "LUKS2, cryptsetup's default"
cryptsetup close lk
cryptsetup open --disable-keyring --key-file luks.pass "$lbase" lk || fail "cryptsetup open --disable-keyring: exit $?"
ltable=$(dmsetup table --showkeys lk)
[[ $ltable != *:logon:* ]] || fail "--disable-keyring still uses the keyring: $ltable"
lsize=$(blockdev --getsize64 /dev/mapper/lk)
head -c "$lsize" /dev/urandom > lpat
put lpat /dev/mapper/lk
$F start -q --fleece-dev "$fl" lk
put new /dev/mapper/lk
same /dev/mapper/lk-fleece-view lpat "the view of the LUKS2 volume"
$F stop -q lk
assert_eq "$(dmsetup table --showkeys lk)" "$ltable" "lk's table after stop"
cryptsetup close lk
step "ok"
