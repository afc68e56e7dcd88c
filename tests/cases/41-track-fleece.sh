#!/bin/bash
# fleece start/stop on a tracked device (issue 14, interface T2): the
# fleece-track table moves to the hidden origin NAME-fleece-origin (the
# kernel shares the tracker), the point in time is also the tracker's
# checkpoint (the epoch moves by one, the changes before it become the
# previous set), the tracker keeps marking the writes made during the
# backup, the view holds the point in time byte for byte, and fleece stop
# (also --force without the state file) puts the fleece-track table back.
# A failed checkpoint (fault point) undoes the start and leaves the tracker
# as it was.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir

dmsetup create data -u TEST-tf --table "0 131072 linear /dev/ram0 0"
data=/dev/mapper/data
linear=$(dmsetup table data)
store=$(mkdev store 1 1)
fl=$(mkdev fl 64 1)
mkpattern pat 64 pat
put pat "$data"

# tstat FIELD...: fields of 'fleece track status --json data', one line.
tstat() {
	$F track status --json data | python3 -c '
import json, sys
d = json.load(sys.stdin)["devices"][0]
print(" ".join(str(d[k]) for k in sys.argv[1:]))' "$@"
}
wr() { # chunk... (64 KiB each), into data and into the expected image "want"
	local c
	for c in "$@"; do
		dd if=/dev/urandom of=chunk bs=64k count=1 status=none
		dd if=chunk of=$data bs=64k seek="$c" count=1 oflag=direct conv=notrunc status=none
		dd if=chunk of=want bs=64k seek="$c" count=1 conv=notrunc status=none
	done
}

step "track data, write chunks 2 and 3"
$F track start -q --store "$store" data
smm=$(devno store)
track_table="0 131072 fleece-track 1:0 0 $smm 128 TEST-tf"
cp pat want
wr 2 3
assert_eq "$(tstat epoch generation changed prev_state)" "1 1 2 none" "before the backup"
uuid0=$(tstat store_uuid)

step "a failed checkpoint undoes the start; the tracker is as it was"
FLEECE_FAULT=track-checkpoint=EIO expect_exit 1 $F start --fleece-dev "$fl" data
echo "$T_ERR"
[[ $T_ERR == *"data-fleece-origin: the tracker refused the checkpoint"* ]] || fail "message: $T_ERR"
no_fleece_devices
assert_eq "$(dmsetup table data)" "$track_table 1 format" "table after the failed start"
assert_eq "$(tstat epoch changed prev_state)" "1 2 none" "tracker after the failed start"
[ -z "$(ls -A state 2>/dev/null)" ] || fail "state files left: $(ls state)"

step "fleece start on the tracked device"
cp want frozen
$F start --fleece-dev "$fl" data > start.out 2>&1 || { cat start.out; fail "start"; }
cat start.out
omm=$(devno data-fleece-origin)
assert_eq "$(dmsetup table data-fleece-origin)" "$track_table" "the hidden origin: the fleece-track table, no format"
assert_eq "$(dmsetup table data)" "0 131072 fleece $omm $(devno fl) 128 4 cbw_timeout_ms 45000" "data's fleece table"
grep_q -x "track_store=$smm" state/data || fail "the state file does not record the tracking: $(cat state/data)"
assert_eq "$(tstat table_device epoch generation changed changed_prev prev_state store_uuid)" \
	"data-fleece-origin 2 1 0 2 ready $uuid0" "the point in time is the checkpoint"
expect_exit 3 $F track stop data
[[ $T_ERR == *"data: is fleeced"* ]] || fail "track stop while fleeced: $T_ERR"

step "writes during the backup are marked; the view is the point in time"
wr 10 11 500
same /dev/mapper/data-fleece-view frozen "the view"
same "$data" want "data during the backup"
assert_eq "$(tstat changed changed_prev)" "3 2" "marks during the backup"

step "fleece stop: the fleece-track table back, the tracker keeps its marks"
$F stop data
no_fleece_devices
assert_eq "$(dmsetup table data)" "$track_table" "data's table after stop"
wr 20
assert_eq "$(tstat table_device epoch changed changed_prev prev_state)" "data 2 4 2 ready" "after stop"
same "$data" want "data after stop"

step "fleece stop --force without the state file"
cp want frozen
$F start -q --fleece-dev "$fl" data
assert_eq "$(tstat epoch changed changed_prev)" "3 0 6" "the second point in time (the previous set, never confirmed, merged first)"
rm state/data
wr 30
$F stop --force data
no_fleece_devices
assert_eq "$(dmsetup table data)" "$track_table" "data's table after stop --force"
assert_eq "$(tstat epoch changed)" "3 1" "after stop --force"
same "$data" want "data after stop --force"

step "track stop: the linear table back"
$F track stop -q data
assert_eq "$(dmsetup table data)" "$linear" "linear table back"
same "$data" want "data at the end"
step "ok"
