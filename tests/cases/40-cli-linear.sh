#!/bin/bash
# fleece start/status/stop on a plain dmsetup linear device: the view is the
# point-in-time image, the tables and names are as documented, status is
# right, stop puts everything back and is idempotent.  A device whose table
# is one linear target gets the fleece target in its place, at the same
# device and offset (no hidden origin); any other table moves to a hidden
# origin NAME-fleece-origin under the fleece target.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

# --- a plain linear device, 1 MiB into ram0 ----------------------------------
mkdev pad 1 > /dev/null
data=$(mkdev data 16)
fl=$(mkdev fl 16 1)
mkpattern old 16 old
mkpattern new 16 new
put old "$data"
table_before=$(dmsetup table data)
assert_eq "$table_before" "0 32768 linear 1:0 2048" "the test's linear table"

step "start on a linear device: the fleece target takes the linear's place"
$F start --fleece-dev "$fl" data > start.out 2>&1 || { cat start.out; fail "start"; }
cat start.out
grep -q "view /dev/mapper/data-fleece-view" start.out || fail "start does not name the view"
[ -b /dev/mapper/data-fleece-view ] || fail "no /dev/mapper/data-fleece-view"
! dmsetup info data-fleece-origin > /dev/null 2>&1 || fail "a hidden origin for a linear table"
assert_eq "$(dmsetup info -c --noheadings -o uuid data-fleece-view)" "FLEECE-VIEW-data" "view uuid"
fmm=$(devno fl)
assert_eq "$(dmsetup table data)" "0 32768 fleece 1:0 $fmm 128 4 cbw_timeout_ms 45000 origin_offset 2048" \
	"fleece table (defaults: 64K chunks, 45 s timeout; the linear's device and offset)"
assert_eq "$(dmsetup table data-fleece-view)" "0 32768 fleece-view 1:0 $fmm" "view table"
grep -qx "linear=1:0 2048" state/data || fail "the state file does not keep the linear table: $(cat state/data)"
assert_eq "$(status_field data 7)" active "fleece state"

step "overwrite the origin: the view keeps the point in time"
put new /dev/mapper/data
same /dev/mapper/data new "origin after overwrite"
same /dev/mapper/data-fleece-view old "view after overwrite"

copies_settle data
$F status data > status.out; cat status.out
grep -q "^data: active" status.out || fail "status: not active"
grep -q "256 copied" status.out || fail "status: copies not counted"
grep -q "copies: *256 copy-before-write, 0 in flight, 0 failed" status.out || fail "status: copy counts"
grep -q "origin: */dev/ram0 from sector 2048 (in place of the linear table)" status.out || fail "status: origin"
$F status --json > status.json; cat status.json
python3 - status.json <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["devices"]
assert len(d) == 1, d
d = d[0]
assert d["name"] == "data" and d["state"] == "active", d
assert d["view"] == "/dev/mapper/data-fleece-view", d
assert d["chunks_total"] == 256 and d["chunks_copied"] == 256 and d["chunks_pending"] == 0, d
assert d["chunk_bytes"] == 65536 and d["size_bytes"] == 16 << 20, d
assert d["fleece_bytes_used"] == 16 << 20 and d["percent_done"] == 0, d
assert d["cbw_timeout_ms"] == 45000 and d["fail_origin_writes"] is False, d
assert d["origin_device"] == "/dev/ram0" and d["origin_offset_sectors"] == 2048, d
EOF

step "stop"
$F stop data
no_fleece_devices
assert_eq "$(dmsetup table data)" "$table_before" "original table back"
same /dev/mapper/data new "origin after stop"
[ ! -e /dev/mapper/data-fleece-view ] || fail "view node left"
step "stop again: nothing to do, success"
$F stop data > stop2.out 2>&1 || { cat stop2.out; fail "second stop failed"; }
grep -q "nothing to do" stop2.out || fail "second stop: $(cat stop2.out)"
expect_exit 5 $F status data	# not fleeced: 5, not 0, nor 1 as for a failure
[ -z "$(ls -A state 2>/dev/null)" ] || fail "state files left: $(ls state)"

step "options: chunk size, policy, timeout"
$F start -q --chunk-size 1M --fail-origin-writes --cbw-timeout 2.5 --fleece-dev "$fl" /dev/mapper/data
assert_eq "$(dmsetup table data)" \
	"0 32768 fleece 1:0 $fmm 2048 5 fail_origin_writes cbw_timeout_ms 2500 origin_offset 2048" "table with options"
$F stop -q data
$F start -q --cbw-timeout 0 --fleece-dev "$fl" data
assert_eq "$(dmsetup table data)" "0 32768 fleece 1:0 $fmm 128 2 origin_offset 2048" "table without a timeout"
$F stop -q data
assert_eq "$(dmsetup table data)" "$table_before" "original table back"
no_fleece_devices

# --- a table of two linear targets: a hidden origin carries it --------------------
step "start on a two-segment device: NAME-fleece-origin under the fleece target"
seg0=$(mkdev seg0 8)
seg1=$(mkdev seg1 8)
dmsetup create two --table "0 16384 linear $seg1 0
16384 16384 linear $seg0 0"
put old /dev/mapper/two
two_before=$(dmsetup table two)
$F start -q --fleece-dev "$fl" two
[ -b /dev/mapper/two-fleece-origin ] || fail "no /dev/mapper/two-fleece-origin"
assert_eq "$(dmsetup info -c --noheadings -o uuid two-fleece-origin)" "FLEECE-ORIGIN-two" "origin uuid"
assert_eq "$(dmsetup table two-fleece-origin)" "$two_before" "hidden origin carries the original table"
omm=$(devno two-fleece-origin)
assert_eq "$(dmsetup table two)" "0 32768 fleece $omm $fmm 128 2 cbw_timeout_ms 45000" "fleece table on the hidden origin"
assert_eq "$(dmsetup table two-fleece-view)" "0 32768 fleece-view $omm $fmm" "view table"
grep -q "^linear=" state/two && fail "a linear table kept in the state file with a hidden origin"
put new /dev/mapper/two
same /dev/mapper/two new "two-segment origin after overwrite"
same /dev/mapper/two-fleece-view old "two-segment view after overwrite"
$F status two > status.out; cat status.out
grep -q "^two: active" status.out || fail "status of the two-segment fleece"
grep -qx "  origin: */dev/mapper/two-fleece-origin" status.out || fail "status: the hidden origin"
$F stop -q two
no_fleece_devices
assert_eq "$(dmsetup table two)" "$two_before" "two-segment table back"
same /dev/mapper/two new "two-segment origin after stop"

step "ok"
