#!/bin/bash
# fleece track start/stop/status/attach (issue 14, "Tool"):
#   (a) bad input, each refused with a clear message and nothing changed:
#       unknown NAME, a store too small, a store with a file system (swap)
#       signature, a store in use, the store NAME itself, a table that is not
#       one linear target, a fleeced device
#   (b) track start on a dmsetup linear device: the fleece-track table in
#       the linear's place, the store formatted, the record written; status
#       (text and JSON, parsed with python3) counts the chunks written;
#       already tracked: refused; a failed query is an error (exit 1, no
#       JSON), never "not tracked"
#   (c) a simulated crash and reboot: the store's image taken while it is
#       live (dirty), NAME removed, the image put back, NAME re-created with
#       its linear table; status says "not attached"; attach refuses a NAME
#       whose size changed, then attaches without format and reports the
#       store not closed cleanly: epoch, generation and the marks are kept
#   (d) track stop: the linear table back, the record gone; the store's old
#       history is refused without --force, another device's always
#   (e) an LV of a real volume group: start, writes counted, stop
#   (f) attach with a damaged store, each refused with a clear message and
#       nothing changed (table, record, store bytes): both superblock slots
#       bad (one bad slot works), truncated below what the bitmap needs,
#       another device's history on it; start refuses a corrupted store
#       without --force
#   (g) track start of two NAMEs with a store each, in one suspend window:
#       usage and cross checks (one store for both, a NAME as another's
#       store), a failure at each step (FLEECE_FAULT) undoes both
#   (h) LVs of two volume groups: two track starts at once, "fvb/b1 fva/a1"
#       and "fva/a2 fvb/b2", four rounds, each under timeout (a deadlock on
#       lvm2's VG locks, which they must take by VG name, fails it); in the
#       first lvm2 holds fvb's lock (lvremove at its prompt) until both wait;
#       all four tracked, stopped, nothing left, the LVs' data unchanged
#   (i) a track start that gets SIGTERM after its lock waits and checks
#       (stopped at a test fault point) changes nothing and exits 143
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state FLEECE_TRACK_DIR=$PWD/trackdir

# data: 64 MiB, 1 MiB into ram0, with a DM UUID; 64 KiB chunks: 1024 of
# them, so the store needs (2 + 2 * 1) * 4096 = 16384 bytes.
mkdev pad 1 > /dev/null
dmsetup create data -u TEST-data --table "0 131072 linear /dev/ram0 4096"
data=/dev/mapper/data
table=$(dmsetup table data)
store=$(mkdev store 1 1)
other=$(mkdev other 8 1)
head -c 8192 /dev/zero | cmp - <(dd if="$store" bs=8192 count=1 iflag=direct status=none) ||
	fail "the store is not blank to begin with"

unchanged() { # what
	assert_eq "$(dmsetup table data)" "$table" "$1: data's table"
	[ ! -e trackdir/data.conf ] || fail "$1: a record was written"
	head -c 8192 /dev/zero | cmp -s - <(dd if="$store" bs=8192 count=1 iflag=direct status=none) ||
		fail "$1: the store was written"
}
refused() { # what message-regex command...
	local what=$1 re=$2
	shift 2
	expect_exit 3 "$@"
	echo "$T_ERR"
	[[ $T_ERR =~ $re ]] || fail "$what: message '$T_ERR' does not match '$re'"
	unchanged "$what"
}

step "(a) bad input"
refused "unknown NAME" "nosuch: no such device-mapper device" $F track start --store "$store" nosuch
dmsetup create tiny --table "0 24 linear $store 0"	# 12 KiB
refused "store too small" "store /dev/mapper/tiny is too small: .*needs 16384 bytes" \
	$F track start --store /dev/mapper/tiny data
dmsetup remove tiny
dmsetup create holder --table "0 8 linear $store 0"
refused "store in use" "store $store: in use" $F track start --store "$store" data
dmsetup remove holder
refused "store is NAME" "store /dev/mapper/data: it is data itself" $F track start --store "$data" data
dmsetup create two --table "0 2048 linear /dev/ram3 0
2048 2048 linear /dev/ram3 8192"
refused "two targets" "two: its table is 2 target\(s\).*only a device whose table is one linear target" \
	$F track start --store "$store" two
dmsetup remove two
expect_exit 2 $F track start data
[[ $T_ERR == *"give the store: --store DEV"* ]] || fail "no --store: $T_ERR"
expect_exit 2 $F track start --store "$store" --chunk-size 3K data
unchanged "bad chunk size"
# A fleeced device.
fl=$(mkdev fl 8 1)
dmsetup create fd --table "0 16384 linear /dev/ram3 0"
$F start -q --fleece-dev "$fl" fd
refused "fleeced" "fd: is fleeced .*: run 'fleece stop fd' first" $F track start --store "$store" fd
$F stop -q fd
dmsetup remove fd
# A store with a signature: refused, then --force takes it.
mkswap "$store" > /dev/null
expect_exit 3 $F track start --store "$store" data
[[ $T_ERR == *"holds a swap signature"* ]] || fail "swap store: $T_ERR"
assert_eq "$(dmsetup table data)" "$table" "after a store with a signature: data's table"
[ ! -e trackdir/data.conf ] || fail "a record for a refused store"

step "(b) track start: --force over the swap signature"
$F track start --force --store "$store" data > start.out 2>&1 || { cat start.out; fail "track start"; }
cat start.out
grep_q "data: tracked: store $store formatted (a new history), chunk 64.0 KiB, 1024 chunks" start.out ||
	fail "track start's output"
smm=$(devno store)
assert_eq "$(dmsetup table data)" "0 131072 fleece-track 1:0 4096 $smm 128 TEST-data 1 format" \
	"the fleece-track table in the linear's place"
grep_q -x "store=/dev/mapper/store" trackdir/data.conf || fail "record: $(cat trackdir/data.conf)"
grep_q -x "uuid=TEST-data" trackdir/data.conf || fail "record uuid"
grep_q -x "data=1:0 4096" trackdir/data.conf || fail "record data device"
blkid -p "$store" > /dev/null 2>&1 && fail "blkid still finds a signature on the store"
expect_exit 3 $F track start --store "$other" data
[[ $T_ERR == *"data: already tracked (store /dev/mapper/store)"* ]] || fail "already tracked: $T_ERR"
dmsetup create o3 --table "0 16384 linear /dev/ram3 0"
expect_exit 3 $F track start --store "$store" o3
[[ $T_ERR == *"store $store: in use"* ]] || fail "the store of another tracker: $T_ERR"
assert_eq "$(dmsetup table o3)" "0 16384 linear 1:3 0" "o3 after the refused start"
[ ! -e trackdir/o3.conf ] || fail "a record for o3"
dmsetup remove o3

# Chunks 0, 5 and 100 (and 100 again).
for c in 0 5 100 100; do
	dd if=/dev/urandom of=$data bs=64k seek=$c count=1 oflag=direct status=none
done
$F track status data > status.out; cat status.out
grep_q "^data: tracked" status.out || fail "status: tracked"
grep_q "changed: *3 chunks since the last checkpoint" status.out || fail "status: 3 chunks changed"
grep_q "epoch: *1, generation 1, history valid" status.out || fail "status: epoch"
$F track status --json > status.json; cat status.json
python3 - status.json <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["devices"]
assert len(d) == 1, d
d = d[0]
assert d["name"] == "data" and d["tracked"] is True and d["recorded"] is True, d
assert d["store"] == "/dev/mapper/store" and d["chunk_bytes"] == 65536, d
assert d["chunks_total"] == 1024 and d["changed"] == 3 and d["changed_prev"] == 0, d
assert d["epoch"] == 1 and d["generation"] == 1, d
assert d["history"] == "valid" and d["prev_state"] == "none", d
assert d["store_state"] == "dirty" and d["opened"] == "clean", d
assert d["device_id"] == "TEST-data" and d["data_offset_sectors"] == 4096, d
assert d["checkpoint_time"] == 0, d
EOF
# A failed query is an error (exit 1, no JSON), never "not tracked".
FLEECE_FAULT=dm-status=EIO expect_exit 1 $F track status --json data
[[ $T_ERR == *"data: cannot read the tracker's status from data: Input/output error"* ]] || fail "failed status query: $T_ERR"
out=$(FLEECE_FAULT=dm-status=EIO $F track status --json data 2>/dev/null) && fail "exit 0 with a failed status query"
assert_eq "$out" "" "standard output after a failed status query"
FLEECE_FAULT=dm-table=EIO expect_exit 1 $F track status --json
[[ $T_ERR == *"cannot read the table of "*": Input/output error"* ]] || fail "failed table query: $T_ERR"
out=$(FLEECE_FAULT=dm-table=EIO $F track status --json 2>/dev/null) && fail "exit 0 with a failed query"
assert_eq "$out" "" "standard output after a failed query"
expect_exit 3 $F track status other
[[ $T_ERR == *"other: not tracked"* ]] || fail "status of an untracked device: $T_ERR"
expect_exit 3 $F track status nosuch
[[ $T_ERR == *"nosuch: no such device-mapper device"* ]] || fail "status of no device: $T_ERR"

step "(c) a simulated crash and reboot: the live store's image back, data re-created linear, attach"
dd if="$store" of=store.img bs=64k iflag=direct status=none	# dirty, as at a crash
udevadm settle
dmsetup remove data
dd if=store.img of="$store" bs=64k oflag=direct status=none
dmsetup create data -u TEST-data --table "$table"
same_before=$(dd if=$data bs=64k count=101 iflag=direct status=none | sha256sum)
$F track status data > status2.out; cat status2.out
grep_q "data: recorded, not attached" status2.out || fail "status after the reboot"
# Size changed: refused, nothing changed.
dmsetup remove data
dmsetup create data -u TEST-data --table "0 65536 linear /dev/ram0 4096"
expect_exit 3 $F track attach data
[[ $T_ERR == *"data: its size changed (64.0 MiB when tracking started, 32.0 MiB now)"* ]] || fail "attach, size: $T_ERR"
assert_eq "$(dmsetup table data)" "0 65536 linear 1:0 4096" "a refused attach changed data"
dmsetup remove data
dmsetup create data -u TEST-data --table "$table"
$F track attach --all > attach.out 2>&1 || { cat attach.out; fail "attach"; }
cat attach.out
grep_q "data: attached: store /dev/mapper/store, epoch 1, generation 1, 3 chunks changed" attach.out ||
	fail "attach's output"
grep_q "data: its store was not closed cleanly" attach.out || fail "attach does not report the unclean store"
assert_eq "$(dmsetup table data)" "0 131072 fleece-track 1:0 4096 $smm 128 TEST-data" \
	"attached: no format"
$F track status --json data > status3.json
python3 - status3.json <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["devices"][0]
assert d["epoch"] == 1 and d["generation"] == 1 and d["changed"] == 3, d
assert d["history"] == "valid" and d["opened"] == "unclean", d
EOF
$F track attach data > attach2.out 2>&1
grep_q "data: already attached" attach2.out || fail "attach twice: $(cat attach2.out)"

step "(d) track stop"
$F track stop data > stop.out 2>&1 || { cat stop.out; fail "track stop"; }
cat stop.out
assert_eq "$(dmsetup table data)" "$table" "linear table back"
[ ! -e trackdir/data.conf ] || fail "record left after stop"
assert_eq "$(dd if=$data bs=64k count=101 iflag=direct status=none | sha256sum)" "$same_before" \
	"data's content"
expect_exit 3 $F track stop data
[[ $T_ERR == *"data: not tracked"* ]] || fail "stop twice: $T_ERR"
expect_exit 3 $F track start --store "$store" data
[[ $T_ERR == *"holds an earlier tracking history of data"*"--force"* ]] || fail "old history: $T_ERR"
assert_eq "$(dmsetup table data)" "$table" "after the refused start"
dmsetup create o2 -u TEST-o2 --table "0 131072 linear /dev/ram3 0"
expect_exit 3 $F track start --force --store "$store" o2
[[ $T_ERR == *"holds the change tracking of another device (device_id TEST-data"* ]] || fail "another device's store: $T_ERR"
assert_eq "$(dmsetup table o2)" "0 131072 linear 1:3 0" "o2 after the refused start"
dmsetup remove o2

step "(f) attach with a damaged store: one superblock slot bad, both, truncated, another device's"
$F track start -q --force --store "$store" data
for c in 1 2; do
	dd if=/dev/urandom of=$data bs=64k seek=$c count=1 oflag=direct status=none
done
stable=$(dmsetup table store)
# The tracker gone as at a shutdown (the store closed cleanly), data linear.
reboot_sim() {
	udevadm settle
	dmsetup remove data
	dmsetup create data -u TEST-data --table "$table"
}
# The current superblock slot: the one with the magic and the higher seq.
cur_slot() {
	dd if="$store" bs=4k count=2 iflag=direct status=none | python3 -c '
import struct, sys
b = sys.stdin.buffer.read()
s = [(struct.unpack_from("<Q", b, i * 4096 + 16)[0], i) for i in (0, 1)
     if struct.unpack_from("<I", b, i * 4096 + 4)[0] == 0x4b544c46]
print(max(s)[1])'
}
flip() { # byte offset in the store: its bits inverted
	python3 - "$store" "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
off = int(sys.argv[2])
b = os.pread(fd, 1, off)
os.pwrite(fd, bytes([b[0] ^ 0xff]), off)
os.fsync(fd)
os.close(fd)
PY
}
store_sum() { dd if="$store" bs=4k count=4 iflag=direct status=none | sha256sum; }
# A refused attach: exit 3, the message, data's table, its record and the
# store's bytes as they were.
attach_refused() { # what message-regex
	local sum rsum
	sum=$(store_sum)
	rsum=$(sha256sum < trackdir/data.conf)
	expect_exit 3 $F track attach data
	echo "$T_ERR"
	[[ $T_ERR =~ $2 ]] || fail "$1: message '$T_ERR' does not match '$2'"
	assert_eq "$(dmsetup table data)" "$table" "$1: data's table"
	assert_eq "$(sha256sum < trackdir/data.conf)" "$rsum" "$1: the record"
	assert_eq "$(store_sum)" "$sum" "$1: the store's bytes"
	dmsetup info data | grep_q "Tables present: *LIVE$" || fail "$1: data: $(dmsetup info data)"
}
reboot_sim
# The newest slot torn: the other one, a write older, is used.
slot=$(cur_slot)
flip $((slot * 4096 + 300))
assert_eq "$(cur_slot)" "$slot" "the torn slot still has its magic"
$F track attach data > attach3.out 2>&1 || { cat attach3.out; fail "attach with one good slot"; }
cat attach3.out
grep_q "data: attached: store /dev/mapper/store, epoch 1, generation 1, 2 chunks changed" attach3.out ||
	fail "attach with one good slot: its output"
assert_eq "$(dmsetup table data)" "0 131072 fleece-track 1:0 4096 $smm 128 TEST-data" \
	"attached with one good slot"
reboot_sim
# Both slots bad: refused, naming the store; never formatted.
flip 300
flip $((4096 + 300))
attach_refused "both slots bad" \
	"data: its store /dev/mapper/store holds no valid fleece-track superblock: the history is lost"
grep_q "data: recorded, not attached" <($F track status data) || fail "status after the refused attach"
# track start refuses it too, until --force (the documented new history).
dmsetup create o4 -u TEST-o4 --table "0 131072 linear /dev/ram3 0"
expect_exit 3 $F track start --store "$store" o4
[[ $T_ERR == *"store $store: is not blank"*"holds no fleece-track superblock"*"give --force"* ]] ||
	fail "start on a corrupted store: $T_ERR"
assert_eq "$(dmsetup table o4)" "0 131072 linear 1:3 0" "o4 after the refused start"
dmsetup remove o4
# A --force start over the record that fails late: the record and the
# store (its corrupted superblocks) as they were.
rsum=$(sha256sum < trackdir/data.conf)
ssum=$(store_sum)
rc=0
FLEECE_FAULT=resume=EIO $F track start --force --store "$store" data > start1.out 2>&1 || rc=$?
cat start1.out
assert_eq "$rc" 1 "start --force failing at the resume: exit status"
assert_eq "$(dmsetup table data)" "$table" "start --force failing at the resume: data's table"
assert_eq "$(sha256sum < trackdir/data.conf)" "$rsum" "start --force failing at the resume: the record"
assert_eq "$(store_sum)" "$ssum" "start --force failing at the resume: the store's bytes"
$F track start --force --store "$store" data > start2.out 2>&1 || { cat start2.out; fail "start --force"; }
grep_q "data: tracked: store $store formatted (a new history)" start2.out || fail "start --force: $(cat start2.out)"
reboot_sim
# Truncated below what the bitmap needs (12 KiB of 16): refused.
dmsetup suspend store
dmsetup load store --table "0 24 ${stable#0 2048 }"
dmsetup resume store
attach_refused "truncated store" \
	"data: its store /dev/mapper/store is too small: 12.0 KiB, and tracking data \(1024 chunks of 64.0 KiB\) needs 16384 bytes: truncated since it was formatted\? \(not attached\)"
dmsetup suspend store
dmsetup load store --table "$stable"
dmsetup resume store
# Another device's history on the store (a store swapped for another).
dd if="$store" of=store-data.img bs=4k count=4 iflag=direct status=none
st2=$(mkdev st2 1 1)
dmsetup create o4 -u TEST-o4 --table "0 131072 linear /dev/ram3 0"
$F track start -q --store "$st2" o4
udevadm settle
dmsetup remove o4
$F track stop o4 > /dev/null
dd if="$st2" of="$store" bs=4k count=4 iflag=direct oflag=direct status=none
attach_refused "another device's store" \
	"data: its store /dev/mapper/store holds the tracking of another device \(device_id TEST-o4, not TEST-data\)"
dd if=store-data.img of="$store" bs=4k oflag=direct status=none
$F track attach data > attach4.out 2>&1 || { cat attach4.out; fail "attach after the store is back"; }
grep_q "data: attached" attach4.out || fail "attach after the store is back: $(cat attach4.out)"
$F track stop -q data
assert_eq "$(dmsetup table data)" "$table" "linear table back after (f)"

step "(g) track start of two NAMEs, a store each, in one suspend window; any failure undoes both"
dmsetup create d2 -u TEST-d2 --table "0 65536 linear /dev/ram3 0"
d2table=$(dmsetup table d2)
sa=$(mkdev sa 1 1)
sb=$(mkdev sb 1 1)
blank() { head -c 8192 /dev/zero | cmp -s - <(dd if="$1" bs=8192 count=1 iflag=direct status=none); }
both_unchanged() { # what
	assert_eq "$(dmsetup table data)" "$table" "$1: data's table"
	assert_eq "$(dmsetup table d2)" "$d2table" "$1: d2's table"
	dmsetup info data | grep_q "Tables present: *LIVE$" || fail "$1: data: $(dmsetup info data)"
	dmsetup info d2 | grep_q "Tables present: *LIVE$" || fail "$1: d2: $(dmsetup info d2)"
	dmsetup info -c --noheadings -o name,suspended data d2 | grep_q Suspended &&
		fail "$1: a device left suspended"
	[ -z "$(ls trackdir)" ] || fail "$1: records left: $(ls trackdir)"
	blank "$sa" || fail "$1: store sa was written"
	blank "$sb" || fail "$1: store sb was written"
}
# One NAME failing late: undone, its store blank again (the kernel formats
# it at the table load).
rc=0
FLEECE_FAULT=resume=EIO $F track start --store "$sa" data > one.out 2>&1 || rc=$?
cat one.out
assert_eq "$rc" 1 "one NAME, resume fails: exit status"
grep_q "data: not tracked; nothing was changed" one.out || fail "one NAME: $(cat one.out)"
both_unchanged "one NAME, resume fails"
expect_exit 2 $F track start --store "$sa" data d2
[[ $T_ERR == *"give one --store per NAME, in the same order (2 NAMEs, 1 store)"* ]] || fail "one store for two: $T_ERR"
both_unchanged "one store for two NAMEs"
expect_exit 3 $F track start --store "$sa" --store "$sa" data d2
[[ $T_ERR == *"store $sa: given for data and for d2: each NAME needs a store of its own"* ]] ||
	fail "one store twice: $T_ERR"
both_unchanged "one store twice"
expect_exit 3 $F track start --store /dev/mapper/d2 --store "$sb" data d2
[[ $T_ERR == *"store /dev/mapper/d2 (of data): it is d2, or on it"* ]] || fail "a NAME as the store of another: $T_ERR"
both_unchanged "a NAME as another's store"
expect_exit 3 $F track start --store "$sa" --store "$store" data d2	# store: data's old history
[[ $T_ERR == *"store $store: holds the change tracking of another device (device_id TEST-data, not d2's TEST-d2)"* ]] ||
	fail "the second store refused: $T_ERR"
both_unchanged "the second NAME's store refused"
# Each step failing for the second NAME, when the first has passed it:
# dm-load@2: d2's tracker table (data's loaded); track-suspend@2,
# table-check@2: d2 in the window (data suspended); dm-resume@2: d2's
# resume (data already resumed with its tracker: its linear table back).
for f in dm-load@2 track-suspend@2 table-check@2 dm-resume@2; do
	rc=0
	FLEECE_FAULT=$f=EIO $F track start --store "$sa" --store "$sb" data d2 > multi.out 2>&1 || rc=$?
	cat multi.out
	assert_eq "$rc" 1 "$f: exit status"
	grep_q "undoing the track start" multi.out || fail "$f: no rollback"
	grep_q "data: not tracked; nothing was changed" multi.out || fail "$f: data"
	grep_q "d2: not tracked; nothing was changed" multi.out || fail "$f: d2"
	both_unchanged "$f"
done
$F track start --store "$sa" --store "$sb" data d2 > multi.out 2>&1 || { cat multi.out; fail "track start data d2"; }
cat multi.out
grep_q "data: tracked: store $sa formatted" multi.out || fail "data not tracked: $(cat multi.out)"
grep_q "d2: tracked: store $sb formatted" multi.out || fail "d2 not tracked: $(cat multi.out)"
assert_eq "$(dmsetup table data)" "0 131072 fleece-track 1:0 4096 $(devno sa) 128 TEST-data 1 format" "data tracked"
assert_eq "$(dmsetup table d2)" "0 65536 fleece-track 1:3 0 $(devno sb) 128 TEST-d2 1 format" "d2 tracked"
[ -e trackdir/data.conf ] && [ -e trackdir/d2.conf ] || fail "records: $(ls trackdir)"
$F track stop -q data d2
assert_eq "$(dmsetup table data)" "$table" "data after the stop"
assert_eq "$(dmsetup table d2)" "$d2table" "d2 after the stop"
dmsetup remove d2

step "(e) an LV"
pvcreate -q /dev/ram2 > /dev/null
vgcreate -q vgt /dev/ram2 > /dev/null
lvcreate -q -y -L 32M -n lv vgt > /dev/null
lvcreate -q -y -L 4M -n st vgt > /dev/null
lv_table=$(dmsetup table vgt-lv)
lv_uuid=$(dmsetup info -c --noheadings -o uuid vgt-lv)
$F track start --store /dev/vgt/st --chunk-size 4K /dev/vgt/lv
read -r _ len _ pv off <<< "$lv_table"
assert_eq "$(dmsetup table vgt-lv)" \
	"0 $len fleece-track $pv $off $(devno vgt-st) 8 LVM-LV-${lv_uuid:36} 1 format" "the LV's table"
grep_q -x "store=/dev/mapper/vgt-st" trackdir/vgt-lv.conf || fail "LV record: $(cat trackdir/vgt-lv.conf)"
dd if=/dev/urandom of=/dev/vgt/lv bs=4k seek=10 count=3 oflag=direct status=none
assert_eq "$($F track status --json vgt-lv | python3 -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["changed"])')" 3 \
	"LV: chunks changed"
lvs vgt/lv > /dev/null || fail "lvs"
$F track stop vgt/lv
assert_eq "$(dmsetup table vgt-lv)" "$lv_table" "LV table back"
vgchange -q -an vgt > /dev/null

step "(h) LVs of two VGs: two track starts at once, NAMEs in opposite orders, and lvm2 meanwhile"
# track start opens its NAMEs in VG name order (start_order()), each with
# its VG's lvm2 lock held to the end: "fvb/b1 fva/a1" and "fva/a2 fvb/b2"
# both take fva's lock first.  In the order given they deadlock (ABBA), a
# timeout here.  Round 1 makes that certain: lvm2 holds fvb's lock (an
# lvremove at its prompt) until both starts wait, one of them for fva's.
# The stores: 16 KiB each (2 MiB LVs, 64 KiB chunks, as in (b)).  lvm2
# and each fleece run cost about a second under TCG: few of them.
pva=$(mkdev pva 8 1)
pvb=$(mkdev pvb 8 1)
lvm_() { "$@" -q --devices "$pva,$pvb"; }	# lvm2 scans only these
lvm_ vgcreate -s 1M fva "$pva" > /dev/null
lvm_ vgcreate -s 1M fvb "$pvb" > /dev/null
hlvs=(fva-a1 fva-a2 fvb-b1 fvb-b2)
head -c 8M /dev/urandom > hpat
declare -A htab hoff
k=0
for n in "${hlvs[@]}"; do
	lvm_ lvcreate -y -L 2M -n "${n#*-}" "${n%-*}" > /dev/null
	hoff[$n]=$k	# MiB into hpat
	k=$((k + 2))
	dd if=hpat of="/dev/mapper/$n" bs=1M skip="${hoff[$n]}" count=2 oflag=direct status=none
	htab[$n]=$(dmsetup table "$n")
done
hlimit=120	# seconds: a start takes 1-3 s here, 10 times that on the debug kernel
hst=("" "$(mkdev hs1 1 1)" "$(mkdev hs2 1 1)" "$(mkdev hs3 1 1)" "$(mkdev hs4 1 1)")
hstart() { # out NAME NAME store store: in the background
	timeout -k 5 "$hlimit" "$F" track start --force --store "$4" --store "$5" "$2" "$3" > "$1" 2>&1 &
}
hstart_both() {
	hstart h1.out fvb/b1 fva/a1 "${hst[1]}" "${hst[2]}"
	h1=$!
	hstart h2.out fva/a2 fvb/b2 "${hst[3]}" "${hst[4]}"
	h2=$!
}
# Both starts end, within the time limit, exit 0; all four LVs tracked
# (their tables, status, records); then stopped: the linear tables back.
hround() { # round
	local rc1=0 rc2=0 all st n
	wait "$h1" || rc1=$?
	wait "$h2" || rc2=$?
	cat h1.out h2.out
	[[ " $rc1 $rc2 " != *" 124 "* && " $rc1 $rc2 " != *" 137 "* ]] ||
		fail "$1: 'track start fvb/b1 fva/a1' and 'track start fva/a2 fvb/b2' did not end within $hlimit s (exit $rc1, $rc2): deadlocked on lvm2's VG locks (taken in the order given, not by VG name)"
	assert_eq "$rc1 $rc2" "0 0" "$1: the exit status of both track starts"
	all=$(dmsetup table)
	st=$($F track status)
	for n in "${hlvs[@]}"; do
		[[ $'\n'$all == *$'\n'"$n: 0 4096 fleece-track "* ]] ||
			fail "$1: $n's table is no fleece-track: $(dmsetup table "$n")"
		[[ $'\n'$st == *$'\n'"$n: tracked"$'\n'* ]] || fail "$1: $n in track status: $st"
		[ -e "trackdir/$n.conf" ] || fail "$1: no record of $n"
	done
	$F track stop -q fva/a1 fva/a2 fvb/b1 fvb/b2 || fail "$1: track stop"
	all=$(dmsetup table)
	for n in "${hlvs[@]}"; do
		[[ $'\n'$all$'\n' == *$'\n'"$n: ${htab[$n]}"$'\n'* ]] ||
			fail "$1: $n's table after the stop: '$(dmsetup table "$n")', expected '${htab[$n]}'"
	done
	! compgen -G "trackdir/*" > /dev/null || fail "$1: records left: $(ls trackdir)"
}
mkdir -p /run/lock/lvm
# Round 1: an lvremove at its prompt holds fvb's lock until both starts
# wait (in VG order: one holding fva and waiting for fvb, the other
# waiting for fva); then "n", and lvm2 lets fvb go.
rm -f lgo
{ until [ -e lgo ]; do sleep 0.1; done; echo n; } |
	lvremove --devices "$pva,$pvb" fvb/b2 > lvremove.out 2>&1 &
lvr=$!
for _ in $(seq 1 300); do flock -n /run/lock/lvm/V_fvb true || break; sleep 0.1; done
! flock -n /run/lock/lvm/V_fvb true || { touch lgo; cat lvremove.out; fail "lvremove does not hold fvb's lock"; }
hstart_both
for _ in $(seq 1 300); do
	[[ $(<h1.out) == *"waiting for lvm2's lock"* && $(<h2.out) == *"waiting for lvm2's lock"* ]] && break
	kill -0 "$h1" 2>/dev/null && kill -0 "$h2" 2>/dev/null || break
	sleep 0.1
done
[[ $(<h1.out) == *"waiting for lvm2's lock"* && $(<h2.out) == *"waiting for lvm2's lock"* ]] ||
	{ touch lgo; cat h1.out h2.out; fail "round 1: the two track starts do not both wait for a VG lock"; }
sleep 0.5
touch lgo
wait $lvr || true
cat lvremove.out
[[ $(<lvremove.out) == *"Do you really want to remove"*"fvb/b2"* ]] || fail "lvremove did not ask"
hround "round 1"
# Rounds 2-4: both started at once, nothing else holding a lock (in the
# order given they deadlocked in 9 of 14 such rounds: round 1 is the sure one).
for r in 2 3 4; do
	hstart_both
	hround "round $r"
done
no_leftovers
for n in "${hlvs[@]}"; do
	cmp <(dd if="/dev/mapper/$n" bs=1M iflag=direct status=none) \
		<(dd if=hpat bs=1M skip="${hoff[$n]}" count=2 status=none) ||
		fail "$n's data changed by four track start/stop rounds"
done
step "(i) a signal after the lock waits and checks: the start changes nothing, exit 128+N"
# Stopped at the test fault point after its checks (the VG locks held),
# then SIGTERM and SIGCONT: the start must stop there, not track.
hsum() { sha256sum "${hst[1]}" "${hst[2]}" | cut -d' ' -f1 | tr '\n' ' '; }
before=$(hsum)
FLEECE_FAULT=track-start=STOP "$F" track start --force --store "${hst[1]}" --store "${hst[2]}" \
	fvb/b1 fva/a1 > i.out 2>&1 &
ipid=$!
for _ in $(seq 1 600); do
	[ "$(awk '{ print $3 }' /proc/$ipid/stat 2>/dev/null)" = T ] && break
	kill -0 $ipid 2>/dev/null || break
	sleep 0.1
done
[ "$(awk '{ print $3 }' /proc/$ipid/stat 2>/dev/null)" = T ] || { cat i.out; fail "(i): the start did not stop at its fault point"; }
kill -TERM $ipid
kill -CONT $ipid
rc=0; wait $ipid || rc=$?
cat i.out
assert_eq "$rc" 143 "(i): exit status of a track start interrupted by SIGTERM"
grep -q "interrupted by signal 15" i.out || fail "(i): the signal not named"
for n in fvb-b1 fva-a1; do
	assert_eq "$(dmsetup table "$n")" "${htab[$n]}" "(i): $n's table"
done
assert_eq "$(hsum)" "$before" "(i): the stores' bytes"
no_leftovers
lvm_ vgchange -an fva fvb > /dev/null
step "ok"
