#!/bin/bash
# fleece start on two devices at once takes one consistent point: a writer
# alternates between them, writing an ever increasing sequence number to
# each in turn (A gets 1, B gets 2, A gets 3, ...), each write completing
# before the next.  At any single moment, the last numbers on A and B are
# consecutive; two separate points in time would show a larger gap.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

a=$(mkdev da 16)
b=$(mkdev db 16)
fa=$(mkdev fa 16 1)
fb=$(mkdev fb 16 1)
ta=$(dmsetup table da)
tb=$(dmsetup table db)

seqof() { dd if="$1" bs=4096 count=1 iflag=direct status=none | head -c 20 | sed 's/^0*//'; }

ab_writer "$a" "$b" "$PWD/stop.flag" > writer.log 2>&1 &
wpid=$!
for i in $(seq 1 100); do [ -s last ] && break; sleep 0.1; done
[ -s last ] || { cat writer.log; fail "the writer does not write"; }
sleep 1
before=$(cat last)
step "writer at $before: start both"
$F start --fleece-dev "$fa,$fb" da db 2>&1 | tee start.out
sleep 2
after=$(cat last)
touch stop.flag
wait $wpid || { cat writer.log; fail "the writer failed"; }
grep -q "one point in time for 2 devices" start.out || fail "start does not say one point in time"
sa=$(seqof /dev/mapper/da-fleece-view)
sb=$(seqof /dev/mapper/db-fleece-view)
step "writer went from $before to $after; views: A=$sa B=$sb"
[ "$after" -gt $((before + 10)) ] || fail "the writer made no progress around the start"
[ "$sa" -ge "$before" ] && [ "$sb" -ge "$before" ] || fail "views older than the start"
[ "$sa" -lt "$after" ] && [ "$sb" -lt "$after" ] || fail "views newer than the writer after the start"
d=$((sa - sb)); d=${d#-}
assert_eq "$d" 1 "distance between the last numbers on the two views (A=$sa B=$sb)"
[ $((sa % 2)) = 1 ] && [ $((sb % 2)) = 0 ] || fail "odd numbers go to A, even to B: A=$sa B=$sb"
# The origins kept going.
[ "$(seqof "$a")" -gt "$sa" ] || [ "$(seqof "$b")" -gt "$sb" ] || fail "origins did not move on"

step "stop both"
$F stop da db
assert_eq "$(dmsetup table da)" "$ta" "table of da back"
assert_eq "$(dmsetup table db)" "$tb" "table of db back"
[ -z "$(dmsetup info -c --noheadings -o uuid | grep FLEECE- || true)" ] || fail "FLEECE- devices left"

step "a refusal for the second device changes nothing for the first"
# db's fleece device is too small: nothing may change for either.
small=$(mkdev small 8 1)
expect_exit 3 $F start --fleece-dev "$fa,$small" da db
echo "$T_ERR"
echo "$T_ERR" | grep_q "too small" || fail "no 'too small' message"
assert_eq "$(dmsetup table da)" "$ta" "da unchanged"
[ -z "$(dmsetup info -c --noheadings -o uuid | grep FLEECE- || true)" ] || fail "FLEECE- devices left"

step "backup -o DIR/ --json: one member of \"devices\" each, also when refused"
mkdir imgs
$F backup -q --json --sha256 --fleece-dev "$fa,$fb" da db -o imgs/ > m.json ||
	{ cat m.json; fail "backup -o DIR/ --json failed"; }
cat m.json
cmp imgs/da.img "$a" && cmp imgs/db.img "$b" || fail "the images differ from the devices"
python3 - m.json "$(sha256sum < imgs/da.img | cut -d' ' -f1)" "$(sha256sum < imgs/db.img | cut -d' ' -f1)" <<'EOF' ||
import json, sys
top = json.load(open(sys.argv[1]))
assert top["command"] == "backup" and top["result"] == "ok" and top["exit_code"] == 0, top
d = top["devices"]
assert [x["name"] for x in d] == ["da", "db"], d
assert [x["output"] for x in d] == ["imgs/da.img", "imgs/db.img"], d
assert [x["sha256"] for x in d] == sys.argv[2:4], d
for x in d:
    assert x["result"] == "ok" and x["exit_code"] == 0 and x["error"] is None, x
    assert x["size_bytes"] == x["bytes_read"] == x["released_bytes"] == 16 << 20, x
    assert x["kind"] == "full" and isinstance(x["cbw_count"], int), x
EOF
	fail "backup -o DIR/ --json: the fields"
rm imgs/*
rc=0; $F backup -q --json --fleece-dev "$fa,$small" da db -o imgs/ > m.json 2> m.err || rc=$?
cat m.err m.json
assert_eq "$rc" 3 "backup -o DIR/ with a fleece device too small: exit status"
python3 - m.json <<'EOF' ||
import json, sys
top = json.load(open(sys.argv[1]))
assert top["result"] == "refused" and top["exit_code"] == 3, top
d = top["devices"]
assert [x["name"] for x in d] == ["da", "db"], d
assert all(x["result"] == "refused" and x["exit_code"] == 3 and x["bytes_read"] == 0 for x in d), d
assert all("too small" in x["error"] for x in d), d
EOF
	fail "backup -o DIR/ --json, refused: the fields"
[ -z "$(ls imgs)" ] || fail "images left by the refused backup: $(ls imgs)"
[ -z "$(dmsetup info -c --noheadings -o uuid | grep FLEECE- || true)" ] || fail "FLEECE- devices left"
step "ok"
