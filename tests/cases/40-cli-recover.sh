#!/bin/bash
# The states a crash can leave in the middle of "fleece start" or "fleece
# stop", made by hand with dmsetup: "fleece stop" finishes each of them and
# leaves the device as it was; a fleece table fleece(8) did not make is left
# alone.
. "$SRC/tests/lib.sh"
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 24

# --- states left by a crash in the middle of start or stop --------------------
fl=$(mkdev fl 16 1)
mm() { dmsetup info -c --noheadings -o major,minor --separator : "$1"; }
origin_like_start() {
	dmsetup create data-fleece-origin --uuid FLEECE-ORIGIN-data --table "$table"
}
fleece_line() { echo "0 32768 fleece $(mm data-fleece-origin) $(mm fl) 128"; }

step "crash after the hidden origin was created"
origin_like_start
$F stop data
as_before "hidden origin only"

step "crash after the fleece table was loaded (inactive)"
origin_like_start
dmsetup load data --table "$(fleece_line)"
$F stop data
as_before "fleece table loaded"

step "crash with data suspended and the fleece table loaded"
origin_like_start
dmsetup load data --table "$(fleece_line)"
dmsetup suspend data
$F stop data 2>&1 | tee stop.out
grep -q "resumed" stop.out || fail "stop does not say it resumed data"
as_before "suspended with the fleece table loaded"

step "crash after the resume, before the view"
origin_like_start
dmsetup load data --table "$(fleece_line)"
dmsetup suspend data
dmsetup resume data
rc=0; $F status data > status.out || rc=$?
cat status.out
grep -q "^data: incomplete" status.out || fail "status does not call it incomplete"
assert_eq "$rc" 1 "exit status of status for an incomplete fleece"
$F stop data
as_before "fleece live, no view"

step "crash in stop after the original table was loaded, data suspended"
$F start -q --fleece-dev "$fl" data
dmsetup remove data-fleece-view
dmsetup load data --table "$table"
dmsetup suspend data
$F stop data
as_before "stop interrupted while suspended"

step "a fleece table fleece(8) did not make is left alone"
dmsetup create other-origin --table "$table"
dmsetup load data --table "0 32768 fleece $(mm other-origin) $(mm fl) 128"
dmsetup suspend data; dmsetup resume data
rc=0; $F stop data 2> stop.err || rc=$?
cat stop.err
assert_eq "$rc" 3 "stop of a foreign fleece"
grep -q "did not make" stop.err || fail "no explanation for the foreign fleece"
dmsetup load data --table "$table"; dmsetup suspend data; dmsetup resume data
dmsetup remove other-origin
as_before "foreign fleece"
step "crash after the fleece file and its loop device were made"
truncate -s 16M /mnt/fdir/data.fleece
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
rc=0; $F status data > status.out || rc=$?
cat status.out
grep -q "^data: incomplete" status.out || fail "status after a reboot"
assert_eq "$rc" 1 "exit status of status after a reboot"
$F stop data
as_before "after a reboot"
umount /mnt/fdir
step "ok"
