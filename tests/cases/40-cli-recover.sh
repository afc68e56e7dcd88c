#!/bin/bash
# The states a crash can leave in the middle of "fleece start" or "fleece
# stop", made by hand with dmsetup: "fleece stop" finishes each of them and
# leaves the device as it was; a fleece table fleece(8) did not make is left
# alone.  Both layouts: a hidden origin under the fleece target (any table),
# and the fleece target in place of a linear table, which only the state
# file records.  "fleece stop --force" rebuilds a linear table from the
# live fleece table when the state file is lost or unreadable, and refuses
# when that is ambiguous.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
mkdev pad 1 > /dev/null		# data at an offset into ram0
cli_fixture 16 24

# --- states left by a crash in the middle of start or stop --------------------
fl=$(mkdev fl 16 1)
# Layout "hidden origin": start first creates data-fleece-origin with data's
# table, and the fleece table stands on it.
hidden_origin_first() {
	dmsetup create data-fleece-origin --uuid FLEECE-ORIGIN-data --table "$table"
}
hidden_origin_line() { echo "0 32768 fleece $(devno data-fleece-origin) $(devno fl) 128"; }
# Layout "linear": data's table is one linear target; start first writes the
# state file, which keeps it, and the fleece table takes its place.
lin=$(dmsetup table data | cut -d' ' -f4-)	# "1:0 2048"
assert_eq "$lin" "1:0 2048" "data's linear target"
linear_first() {
	mkdir -p state
	printf 'phase=starting\nlinear=%s\n' "$lin" > state/data
}
linear_line() { echo "0 32768 fleece ${lin% *} $(devno fl) 128 2 origin_offset ${lin#* }"; }
swap_in() { dmsetup load data --table "$1"; dmsetup suspend data; dmsetup resume data; }
# "fleece status data" must call it incomplete, with exit status 1.
status_incomplete() { # what
	local rc=0
	$F status data > status.out || rc=$?
	cat status.out
	grep -q "^data: incomplete" status.out || fail "$1: status does not call it incomplete"
	assert_eq "$rc" 1 "$1: exit status of status for an incomplete fleece"
}
# "fleece stop data" must leave a fleece table it did not make alone: exit
# status 3, and the reason.
stop_refuses() { # what
	local rc=0
	$F stop data 2> stop.err || rc=$?
	cat stop.err
	assert_eq "$rc" 3 "$1: exit status of stop"
	grep -q "did not make" stop.err || fail "$1: no explanation for the foreign fleece"
}

# The states a crash in "start" can leave, in one layout: "fleece stop"
# finishes each, and data is as it was.
crash_states() { # layout first-step-function fleece-line-function
	local l=$1 first=$2 line=$3

	step "$l: crash after the first step"
	$first
	$F stop data
	as_before "$l: first step only"

	step "$l: crash after the fleece table was loaded (inactive)"
	$first
	dmsetup load data --table "$($line)"
	$F stop data
	as_before "$l: fleece table loaded"

	step "$l: crash with data suspended and the fleece table loaded"
	$first
	dmsetup load data --table "$($line)"
	dmsetup suspend data
	$F stop data 2>&1 | tee stop.out
	grep -q "resumed" stop.out || fail "$l: stop does not say it resumed data"
	as_before "$l: suspended with the fleece table loaded"

	step "$l: crash after the resume, before the view"
	$first
	swap_in "$($line)"
	status_incomplete "$l: fleece live, no view"
	$F stop data
	as_before "$l: fleece live, no view"
}
crash_states "hidden origin" hidden_origin_first hidden_origin_line
crash_states linear linear_first linear_line

step "crash in stop after the original table was loaded, data suspended"
$F start -q --fleece-dev "$fl" data
dmsetup remove data-fleece-view
dmsetup load data --table "$table"
dmsetup suspend data
$F stop data
as_before "stop interrupted while suspended"

step "a fleece table fleece(8) did not make is left alone"
dmsetup create other-origin --table "$table"
swap_in "0 32768 fleece $(devno other-origin) $(devno fl) 128"
stop_refuses "a fleece on another origin"
swap_in "$table"
dmsetup remove other-origin
as_before "foreign fleece"

step "linear: a fleece table in place of the linear is left alone without a matching state"
swap_in "$(linear_line)"
stop_refuses "a fleece in the linear's place, no state file"
printf 'phase=running\nlinear=%s 0\n' "${lin% *}" > state/data	# another offset
stop_refuses "a fleece in the linear's place, the state file at another offset"
assert_eq "$(dmsetup table data)" "$(linear_line)" "the foreign fleece table, left alone"
rm state/data
swap_in "$table"
as_before "linear: foreign fleece"

step "stop --force: the state file lost, the linear table rebuilt from the live fleece table"
$F start -q --fleece-dev "$fl" data
rm state/data
expect_exit 3 $F stop data
$F stop --force data 2> stop.err || { cat stop.err; fail "stop --force"; }
cat stop.err
grep -q "rebuilt its linear table (1:0 2048) from the live fleece table" stop.err ||
	fail "stop --force does not say what it rebuilt"
as_before "stop --force, state lost"

step "stop --force: the state file unreadable"
$F start -q --fleece-dev "$fl" data
rm state/data
ln -s data state/data	# ELOOP
expect_exit 1 $F stop data
[[ $T_ERR == *"cannot read its state file"* ]] || fail "stop with an unreadable state: $T_ERR"
$F stop --force data 2> stop.err || { cat stop.err; fail "stop --force, unreadable state"; }
cat stop.err
grep -q "rebuilt its linear table" stop.err || fail "stop --force, unreadable state: nothing rebuilt"
as_before "stop --force, state unreadable"

step "stop --force refuses what is ambiguous"
swap_in "$(linear_line)"
printf 'phase=running\nlinear=%s 0\n' "${lin% *}" > state/data	# another offset
expect_exit 3 $F stop --force data
echo "$T_ERR"
[[ $T_ERR == *"the state file records the linear table 1:0 0"* ]] || fail "stop --force, another state: $T_ERR"
rm state/data
swap_in "$table"
dmsetup create x-fleece-origin --uuid FLEECE-ORIGIN-x --table "$table"
swap_in "0 32768 fleece $(devno x-fleece-origin) $(devno fl) 128"
expect_exit 3 $F stop --force data
echo "$T_ERR"
[[ $T_ERR == *"x-fleece-origin, which fleece created for another device"* ]] ||
	fail "stop --force, another device's hidden origin: $T_ERR"
swap_in "$table"
dmsetup remove x-fleece-origin
as_before "stop --force refused"

step "crash after the fleece file and its loop device were made"
truncate -s 16M /mnt/fdir/data.fleece
modprobe loop	# run alone, no test before has loaded it
loop=$(losetup -f --show /mnt/fdir/data.fleece)
mkdir -p state
printf 'phase=starting\nfleece_file=/mnt/fdir/data.fleece\nloop_dev=%s\n' \
	"$(cat /sys/block/${loop#/dev/}/dev)" > state/data
$F stop data
as_before "fleece file and loop device"

step "after a reboot: the fleece file and the state are left"
truncate -s 16M /mnt/fdir/data.fleece
printf 'phase=running\nfleece_file=/mnt/fdir/data.fleece\npartial=%s/out.img.partial\n' "$PWD" > state/data
touch out.img.partial
status_incomplete "after a reboot"
$F stop data
as_before "after a reboot"
umount /mnt/fdir
step "ok"
