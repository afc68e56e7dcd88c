#!/bin/bash
# fleece start/status/stop on a plain dmsetup linear device: the view is the
# point-in-time image, the tables and names are as documented, status is
# right, stop puts everything back and is idempotent.
. "$SRC/tests/lib.sh"
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

# --- a plain linear device ---------------------------------------------------
data=$(mkdev data 16)
fl=$(mkdev fl 16 1)
mkpattern old 16 old
mkpattern new 16 new
put old "$data"
table_before=$(dmsetup table data)

step "start on a linear device"
$F start --fleece-dev "$fl" data > start.out 2>&1 || { cat start.out; fail "start"; }
cat start.out
grep -q "view /dev/mapper/data-fleece-view" start.out || fail "start does not name the view"
[ -b /dev/mapper/data-fleece-view ] || fail "no /dev/mapper/data-fleece-view"
[ -b /dev/mapper/data-fleece-origin ] || fail "no /dev/mapper/data-fleece-origin"
assert_eq "$(dmsetup info -c --noheadings -o uuid data-fleece-view)" "FLEECE-VIEW-data" "view uuid"
assert_eq "$(dmsetup info -c --noheadings -o uuid data-fleece-origin)" "FLEECE-ORIGIN-data" "origin uuid"
assert_eq "$(dmsetup table data-fleece-origin)" "$table_before" "hidden origin carries the original table"
omm=$(dmsetup info -c --noheadings -o major,minor --separator : data-fleece-origin)
fmm=$(dmsetup info -c --noheadings -o major,minor --separator : fl)
assert_eq "$(dmsetup table data)" "0 32768 fleece $omm $fmm 128 2 cbw_timeout_ms 45000" "fleece table (defaults: 64K chunks, 45 s timeout)"
assert_eq "$(dmsetup table data-fleece-view)" "0 32768 fleece-view $omm $fmm" "view table"
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
$F status data && fail "status of a device that is not fleeced must not succeed"
[ -z "$(ls -A state 2>/dev/null)" ] || fail "state files left: $(ls state)"

step "options: chunk size, policy, timeout"
$F start -q --chunk-size 1M --fail-origin-writes --cbw-timeout 2.5 --fleece-dev "$fl" /dev/mapper/data
omm=$(dmsetup info -c --noheadings -o major,minor --separator : data-fleece-origin)
assert_eq "$(dmsetup table data)" "0 32768 fleece $omm $fmm 2048 3 fail_origin_writes cbw_timeout_ms 2500" "table with options"
$F stop -q data
$F start -q --cbw-timeout 0 --fleece-dev "$fl" data
omm=$(dmsetup info -c --noheadings -o major,minor --separator : data-fleece-origin)
assert_eq "$(dmsetup table data)" "0 32768 fleece $omm $fmm 128" "table without a timeout"
$F stop -q data
no_fleece_devices

step "ok"
