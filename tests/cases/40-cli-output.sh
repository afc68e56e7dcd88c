#!/bin/bash
# The output of fleece backup:
#  1. a new image is mode 0600 whatever the umask, and equals the device;
#  2. a symlink at FILE.partial (or any existing FILE.partial) is refused and
#     left alone: the file it points to is not written;
#  3. a second backup of the same device while the first runs fails at the
#     lock (exit 3) without touching the first one's output, which completes;
#  4. -o on NAME itself, its fleece device, a device NAME is built on, a
#     mounted device, the view's name, or a file on NAME (ext4, and btrfs
#     with its anonymous st_dev) is refused (exit 3, or 2 for the view's
#     name) and nothing is written;
#  5. block-device and stdout-to-file outputs are synced before each release
#     (BLKDISCARD on the view), as files are, and in batches (16 blocks of
#     1 MiB: at most 8 syncs, not one per block): checked with strace;
#  6. a read that fails midway (the view invalidated: exit 4; SIGTERM: exit
#     143), of fleece read and of fleece backup, removes its FILE.partial and
#     says so, and leaves no FILE; --json says "invalid" or "interrupted"
#     with the exit code and the error (the invalidation, not the warning
#     of a release that failed before it); status of the invalid view exits 4;
#  7. status exit codes: 0 active (and nothing fleeced, no NAME), 5 a NAME
#     not fleeced (also with --json, which lists it as "none"); 1 for a failed
#     query is 40-cli-dmerror's; backup and read --json: the fields against
#     the image (size, bytes read and released, sha256), refused with -o -;
#     an incremental's kind, fallback reason and bytes read.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 32
fl=$(mkdev fl 16 1)

# jf FILE KEY...: values from the --json object in FILE, space-separated:
# "top.KEY" from the object, KEY from its one device (strings bare).
jf() {
	python3 - "$@" <<'EOF' || fail "not one device's JSON: $(cat "$1")"
import json, sys
top = json.load(open(sys.argv[1]))
assert len(top["devices"]) == 1, top
d = top["devices"][0]
v = [top[k[4:]] if k.startswith("top.") else d[k] for k in sys.argv[2:]]
print(" ".join(x if isinstance(x, str) else json.dumps(x) for x in v))
EOF
}

leftovers() { # what: no devices, state, partial, fleece files
	local u
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: state left: $(ls state)"
	[ "$(dmsetup table data)" = "$table" ] || fail "$1: data's table changed"
	[ -z "$(ls /mnt/fdir | grep -v lost+found)" ] || fail "$1: fleece files left"
}

step "1. a new image is 0600 under umask 022, and equals the device"
(umask 022; $F backup -q --fleece-dir /mnt/fdir data -o out.img)
assert_eq "$(stat -c %a out.img)" 600 "mode of the image"
cmp out.img pat || fail "the image differs from the device"
leftovers "backup"
rm out.img

step "2. a symlink at FILE.partial is refused, its target left alone"
echo "precious" > victim
ln -s "$PWD/victim" out.img.partial
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
echo "$T_ERR"
[[ $T_ERR == *"out.img.partial exists"* ]] || fail "no reason given: $T_ERR"
assert_eq "$(cat victim)" "precious" "the symlink's target"
[ -L out.img.partial ] || fail "the symlink was removed"
[ ! -e out.img ] || fail "out.img created"
leftovers "symlink"
rm out.img.partial
echo "another run's data" > out.img.partial
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
assert_eq "$(cat out.img.partial)" "another run's data" "an existing FILE.partial"
rm out.img.partial victim
leftovers "existing partial"

step "3. a second backup of the same device while the first runs"
$F backup -q --fleece-dir /mnt/fdir --rate 2M data -o out.img 2> first.err &
bpid=$!
for i in $(seq 1 300); do
	[ -b /dev/mapper/data-fleece-view ] && [ -e out.img.partial ] && break
	kill -0 $bpid 2>/dev/null || { cat first.err; fail "the first backup ended early"; }
	sleep 0.1
done
[ -e out.img.partial ] || fail "the first backup has no partial output"
# Stopped while the second runs: its lock and its partial output stay, and
# it cannot finish first on a slow kernel (it did, on the debug kernel,
# before the stop: 2026-12-01).
kill -STOP $bpid
ino=$(stat -c %i out.img.partial)
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out.img
echo "$T_ERR"
[[ $T_ERR == *"another fleece command"* ]] || fail "second backup: no reason: $T_ERR"
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir data -o out2.img
[ ! -e out2.img.partial ] && [ ! -e out2.img ] || fail "the refused backup created its output"
assert_eq "$(stat -c %i out.img.partial)" "$ino" "the first backup's partial output"
kill -0 $bpid 2>/dev/null || { cat first.err; fail "the first backup ended early"; }
kill -CONT $bpid
wait $bpid || { cat first.err; fail "the first backup failed"; }
cmp out.img pat || fail "the first backup's image differs"
leftovers "two backups"
rm out.img

step "4. outputs that are, or are on, what is being backed up"
out=$(mkdev outdev 16 2)
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o /dev/mapper/data
[[ $T_ERR == *"it is data"* ]] || fail "-o NAME: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o "$fl"
[[ $T_ERR == *"the fleece device"* ]] || fail "-o the fleece device: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o /dev/ram0
[[ $T_ERR == *"in use"* || $T_ERR == *"built on it"* ]] || fail "-o NAME's disk: $T_ERR"
expect_exit 3 $F backup -q --fleece-dev "$fl" data -o "$fsdev"
[[ $T_ERR == *"in use"* ]] || fail "-o a mounted device: $T_ERR"
expect_exit 2 $F backup -q --fleece-dev "$fl" data -o /dev/mapper/data-fleece-view
[[ $T_ERR == *"no such device"* ]] || fail "-o the view's name: $T_ERR"
[ ! -e /dev/mapper/data-fleece-view.partial ] || fail "a file was created in /dev/mapper"
# a file on the device being backed up
fsd=$(mkdev fsd 16 2)
mkfs.ext4 -q -F "$fsd"
mkdir -p /mnt/fsd
mount "$fsd" /mnt/fsd
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir fsd -o /mnt/fsd/img
[[ $T_ERR == *"on fsd itself"* ]] || fail "-o a file on NAME: $T_ERR"
[ -z "$(ls /mnt/fsd | grep -v lost+found)" ] || fail "a file was created on fsd"
umount /mnt/fsd
# The same on btrfs, whose st_dev is anonymous (major 0): the guard finds
# the device through /proc/self/mountinfo and /sys/fs/btrfs (deps.c).
fsb=$(mkdev fsb 128 2)
mkfs.btrfs -q -f "$fsb"
mkdir -p /mnt/fsb
mount "$fsb" /mnt/fsb
assert_eq "$(stat -c %Hd /mnt/fsb)" 0 "the major of btrfs's st_dev (anonymous)"
expect_exit 3 $F backup -q --fleece-dir /mnt/fdir fsb -o /mnt/fsb/img
[[ $T_ERR == *"on fsb itself"* ]] || fail "-o a file on a btrfs on NAME: $T_ERR"
[ -z "$(ls /mnt/fsb)" ] || fail "a file was created on fsb: $(ls /mnt/fsb)"
umount /mnt/fsb
same "$data" pat "data after the refused outputs"
leftovers "refused outputs"

step "4b. fleece read refuses the view, its origin and its fleece device as output"
$F start -q --fleece-dev "$fl" data
expect_exit 3 $F read -q data-fleece-view -o /dev/mapper/data-fleece-view
[[ $T_ERR == *"it is the view,"* ]] || fail "read -o the view: $T_ERR"
expect_exit 3 $F read -q data-fleece-view -o "$fl"
# Held by the fleece table: refused by the exclusive open before the guard.
[[ $T_ERR == *"it is the view's fleece device"* || $T_ERR == *"in use"* ]] ||
	fail "read -o the fleece device: $T_ERR"
expect_exit 3 $F read -q data-fleece-view -o /dev/ram0
[[ $T_ERR == *"the view's origin"* || $T_ERR == *"built on it"* || $T_ERR == *"in use"* ]] ||
	fail "read -o the origin's disk: $T_ERR"
same /dev/mapper/data-fleece-view pat "the view after the refused reads"
$F status data | grep_q "data: active" || fail "the view after the refused reads: $($F status data)"
$F stop -q data
same "$data" pat "data after the refused reads"
leftovers "refused reads"

step "5. block device and stdout-to-file outputs are synced before each release, in batches"
# 16 MiB in 1 MiB blocks: every release after a sync of the output, and
# batched: a sync per 64 MiB or second, not per block (which made 16).
synced_before_release() { # strace-log what
	awk '/fdatasync\(|fsync\(/ { synced = 1 }
	     /fdatasync\(/ { syncs++ }	# not fsync: the state file has some
	     /BLKDISCARD/ { n++; if (!synced) bad++; synced = 0 }
	     END { print n + 0 " releases, " bad + 0 " unsynced, " syncs + 0 " syncs"
		   if (!n || bad || syncs > 8) exit 1 }' "$1" ||
		{ cat "$1"; fail "$2: a release not preceded by a sync of the output, or a sync per block"; }
}
strace -f -qq -e trace=fdatasync,fsync,ioctl -o trace.blk \
	$F backup -q --block-size 1M --fleece-dev "$fl" data -o "$out"
synced_before_release trace.blk "block device output"
same "$out" pat "the image on the block device"
strace -f -qq -e trace=fdatasync,fsync,ioctl -o trace.std \
	$F backup -q --block-size 1M --fleece-dev "$fl" data -o - > out.img
synced_before_release trace.std "stdout to a file"
cmp out.img pat || fail "the image on standard output"
rm out.img
leftovers "synced outputs"

step "6. a read that fails midway removes FILE.partial, and says so"
fl_table=$(dmsetup table fl)
# The reader (in the background, 1 MiB/s: 16 s for data, ended early by the
# invalidation or the signal) has written part of OUT.partial.
reading() { # out pid err
	local i
	for i in $(seq 1 300); do
		[ -s "$1.partial" ] && [ "$(stat -c %b "$1.partial")" -gt 0 ] && return 0
		kill -0 "$2" 2>/dev/null || { cat "$3"; fail "$1: the reader ended early"; }
		sleep 0.1
	done
	fail "$1: nothing written"
}
# The fleece device fails every write: a copy-before-write of the next write
# to data fails, and the view becomes invalid.
invalidate() {
	dmsetup load fl --table "0 $(sectors "$fl") error"
	dmsetup suspend fl
	dmsetup resume fl
	dd if=/dev/zero of="$data" bs=64k count=1 seek=255 oflag=direct status=none
}
fl_back() {
	dmsetup load fl --table "$fl_table"
	dmsetup suspend fl
	dmsetup resume fl
}
partial_removed() { # rc-wanted rc err-file out what
	cat "$3"
	assert_eq "$2" "$1" "$5: exit status"
	grep -q "removed the incomplete image $4.partial" "$3" || fail "$5: no message about $4.partial"
	[ ! -e "$4.partial" ] && [ ! -e "$4" ] || fail "$5: $4 or $4.partial left: $(ls "$4"*)"
}
$F start -q --fleece-dev "$fl" data
$F read -p none --rate 1M --block-size 1M /dev/mapper/data-fleece-view -o r.img 2> r.err &
rpid=$!
reading r.img $rpid r.err
invalidate
rc=0; wait $rpid || rc=$?
partial_removed 4 "$rc" r.err r.img "fleece read, the view invalidated"
grep -q "the view became invalid" r.err || fail "fleece read: the view's invalidation not named"
expect_exit 4 $F status data
rc=0; $F status --json data > st.json || rc=$?
assert_eq "$rc" 4 "status --json of an invalid view: exit status"
assert_eq "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["state"])' < st.json)" \
	invalid "status --json of an invalid view"
expect_exit 4 $F status data nosuch	# invalid outranks "not fleeced"
$F stop -q data
fl_back
put pat "$data"
leftovers "read, view invalidated"

$F start -q --fleece-dev "$fl" data
$F read --json -p none --rate 1M --block-size 1M /dev/mapper/data-fleece-view -o r.img \
	> r.json 2> r.err &
rpid=$!
reading r.img $rpid r.err
kill -TERM $rpid
rc=0; wait $rpid || rc=$?
partial_removed 143 "$rc" r.err r.img "fleece read, SIGTERM"
assert_eq "$(jf r.json top.command top.result top.exit_code result exit_code error sha256)" \
	"read interrupted 143 interrupted 143 data-fleece-view: interrupted by signal 15 null" \
	"fleece read --json, SIGTERM"
$F stop -q data
leftovers "read, SIGTERM"

# The first release fails (a test fault): a warning, the read goes on; the
# invalidation that fails it later is --json's error, not the warning.
FLEECE_FAULT=discard=EIO@1 $F backup --json -p none --rate 1M --block-size 1M \
	--fleece-dev "$fl" data -o b.img > b.json 2> b.err &
bpid=$!
reading b.img $bpid b.err
for i in $(seq 1 300); do
	grep -q "cannot discard" b.err && break
	sleep 0.1
done
grep -q "data: cannot discard the chunks just saved" b.err ||
	{ cat b.err; fail "backup: no message for the failed release"; }
kill -0 $bpid 2>/dev/null || { cat b.err; fail "backup: ended before the view was invalidated"; }
invalidate
rc=0; wait $bpid || rc=$?
partial_removed 4 "$rc" b.err b.img "fleece backup, the view invalidated"
read -r res code bread <<< "$(jf b.json top.result top.exit_code result exit_code bytes_read |
	awk '{ print $1 "/" $3, $2 "/" $4, $5 }')"
assert_eq "$res $code" "invalid/invalid 4/4" "fleece backup --json, the view invalidated"
[ "$bread" -gt 0 ] && [ "$bread" -lt $((16 << 20)) ] || fail "backup --json: bytes_read $bread of an interrupted read"
[[ "$(jf b.json error)" == *"the view became invalid"* ]] || fail "backup --json: the error: $(cat b.json)"
grep -q "warning: data: cannot discard the chunks just saved" b.err ||
	fail "backup: the failed release is not a warning"
fl_back
put pat "$data"
leftovers "backup, view invalidated"

step "7. status exit codes; --json of backup and read"
expect_exit 5 $F status data
rc=0; $F status --json data > st.json || rc=$?
assert_eq "$rc" 5 "status --json of a device not fleeced: exit status"
assert_eq "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["state"])' < st.json)" \
	none "status --json of a device not fleeced"
$F status > st.out || fail "status with nothing fleeced: exit $?"
grep -qx "no fleece found" st.out || fail "status with nothing fleeced: $(cat st.out)"
expect_exit 2 $F backup --json --fleece-dir /mnt/fdir data -o -
[[ $T_ERR == *"--json with -o -"* ]] || fail "backup --json -o -: $T_ERR"
$F backup -q --json --sha256 --fleece-dir /mnt/fdir data -o out.img > b.json ||
	{ cat b.json; fail "backup --json failed"; }
cat b.json
cmp out.img pat || fail "backup --json: the image"
assert_eq "$(jf b.json top.command top.result top.exit_code name output result exit_code error kind fallback_reason)" \
	"backup ok 0 data out.img ok 0 null full null" "backup --json: outcome"
assert_eq "$(jf b.json size_bytes bytes_read released_bytes sha256)" \
	"$((16 << 20)) $((16 << 20)) $((16 << 20)) $(sha256sum < out.img | cut -d' ' -f1)" \
	"backup --json: sizes and digest"
[[ "$(jf b.json cbw_count fleece_peak_bytes seconds)" =~ ^[0-9]+\ [0-9]+\ [0-9.]+$ ]] ||
	fail "backup --json: copies, peak, seconds: $(cat b.json)"
rm out.img
$F start -q --fleece-dir /mnt/fdir data
expect_exit 0 $F status data
expect_exit 2 $F read --json /dev/mapper/data-fleece-view -o -
$F read -q --json --sha256 /dev/mapper/data-fleece-view -o r.img > r.json ||
	{ cat r.json; fail "read --json failed"; }
cmp r.img pat || fail "read --json: the image"
assert_eq "$(jf r.json top.command result exit_code size_bytes bytes_read released_bytes sha256)" \
	"read ok 0 $((16 << 20)) $((16 << 20)) $((16 << 20)) $(sha256sum < r.img | cut -d' ' -f1)" \
	"read --json"
$F stop -q data
rm r.img

# An incremental: a tracked device, its first --incremental a full backup
# (no previous image), then one chunk changed: incremental, one chunk read.
export FLEECE_TRACK_DIR=$PWD/trackdir
raw=$(mkdev raw 16 2)
store=$(mkdev store 1 2)
put pat "$raw"
$F track start -q raw --store "$store"
$F backup -q --json --incremental --fleece-dir /mnt/fdir raw -o inc.img > i1.json ||
	{ cat i1.json; fail "the first --incremental failed"; }
cat i1.json
assert_eq "$(jf i1.json result kind fallback_reason bytes_read)" \
	"ok full no previous image $((16 << 20))" "first --incremental --json"
dd if=/dev/urandom of="$raw" bs=64k seek=100 count=1 oflag=direct conv=notrunc status=none
$F backup -q --json --sha256 --incremental --fleece-dir /mnt/fdir raw -o inc.img > i2.json ||
	{ cat i2.json; fail "the second --incremental failed"; }
cat i2.json
cmp inc.img "$raw" || fail "the incremental image"
assert_eq "$(jf i2.json result kind fallback_reason bytes_read size_bytes sha256)" \
	"ok incremental null 65536 $((16 << 20)) $(sha256sum < inc.img | cut -d' ' -f1)" \
	"second --incremental --json"
$F track stop -q raw
rm -f inc.img inc.img.fleece.json
as_before "end"
umount /mnt/fdir
step "ok"
