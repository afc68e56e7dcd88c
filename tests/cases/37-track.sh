#!/bin/bash
# fleece-track: persistent, crash-safe changed-chunk tracking.  The store is
# read from userspace by tests/track/trackstore.py, a reader of the on-disk
# format written from the rst, and every set is compared exactly (no chunk
# missing, none extra):
#   (a) bad input: each a clear error, and the store unchanged
#   (b) writes, write-zeroes (and discards where the ram disk has them) mark
#       exactly their chunks, across a bitmap block boundary; reads and
#       writes to marked chunks commit nothing
#   (c) checkpoint (only while suspended): the set moves to the previous
#       epoch, the new one starts empty; merge, backup_done; a checkpoint
#       over a previous set that no backup confirmed merges it first
#   (d) writes across a bitmap block boundary (never cut: marked in
#       commits of their own) mark their chunks exactly; suspend/resume, a
#       table reload, remove and re-create keep the set; clean on the store
#       while suspended or removed, dirty while live
#   (e) torn or corrupted store: one superblock slot torn falls back to the
#       other; a corrupted bitmap block reads as all changed; both slots
#       corrupted, another device's store, another size: refused
#   (f) crash model: writers record each acknowledged write; the store's dm
#       device is suspended (--noflush) at random moments (four, the seed
#       is printed), and each time the ram disk
#       beneath it, what a power loss would leave, must mark every chunk
#       acknowledged (even those acknowledged later, while it is frozen);
#       then the tracker is re-created from such an image ("reboot")
#   (g) a failed store: writes needing new marks fail (EIO) while the loss
#       cannot be recorded; once the store works, the loss is recorded (new
#       generation, "lost") and writes pass; a checkpoint starts a valid
#       history again
#   (h) commit batching: 1024 first writes to distinct chunks at iodepth
#       32, the writer and the store's worker on one CPU, complete in at
#       most a quarter as many commits (the status' commits field) and
#       mark exactly their chunks
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

TS=(python3 "$SRC/tests/track/trackstore.py")
CH=4096			# chunk bytes: 8 sectors
N=32768			# chunks: 128 MiB; bitmap block 1 starts at chunk 32512
seed=${RANDOM}${RANDOM}
echo "# seed $seed"
RANDOM=$seed

data=$(mkdev data 128)
store=$(mkdev store 1 1)
STORE_SECTORS=2048
ram_off=$(dmsetup table store | awk '{ print $5 }')	# on /dev/ram1
LEN=$((N * 8))
TABLE="0 $LEN fleece-track $data 0 $store 8 disk-A"
trk=/dev/mapper/trk

# The store as the kernel left it on the ram disk (or FILE): key=value lines.
snap() { "${TS[@]}" show "${1:-$store}" > st; }
st() { sed -n "s/^$1=//p" st; }
# The store's bytes, from the ram disk beneath its dm device.
store_image() { dd if=/dev/ram1 bs=512 skip="$ram_off" count=$STORE_SECTORS iflag=direct status=none; }
status() { dmsetup status trk | cut -d' ' -f4-; }
write_chunks() { "${TS[@]}" write $trk $CH "$@"; }
# udev probes a device that a writer closed: let it finish before a remove.
rm_trk() { udevadm settle; dmsetup remove --retry trk; }
checkpoint() { dmsetup suspend trk; dmsetup message trk 0 checkpoint; dmsetup resume trk; }
expect_set() { # cur prev what: the store read now
	snap
	assert_eq "$(st cur)" "$1" "$3: current set on the store"
	assert_eq "$(st prev)" "$2" "$3: previous set on the store"
}

log "(a) bad input on a blank store: each refused, the store stays blank"
bad() { # table message-regex: a new device trk2 with the table is refused
	dmesg_mark
	expect_fail dmsetup create trk2 --table "$1"
	expect_dmesg_since_mark "fleece-track: $2"
	! dmsetup info trk2 > /dev/null 2>&1 || fail "trk2 exists after: $1"
}
# The first N sectors of a device, O_DIRECT (the page cache may be older).
dev_bytes() { dd if="$1" bs=512 count="$2" iflag=direct status=none; }
bad "$TABLE" "Store is blank"
bad "0 $LEN fleece-track $data 0 $store 12 disk-A 1 format" "Invalid chunk size"
bad "0 $LEN fleece-track $data 0 $store 4 disk-A 1 format" "Invalid chunk size"
bad "0 $LEN fleece-track $data 0 $store 8 $(printf 'x%.0s' {1..64}) 1 format" "Invalid device_id"
bad "0 $LEN fleece-track $data 0 $data 8 disk-A 1 format" "Data and store devices must differ"
bad "0 $LEN fleece-track $data 8 $store 8 disk-A 1 format" "Data device is smaller"
bad "0 $LEN fleece-track $data 0 $store 8 disk-A 1 fast" "Unknown feature"
bad "0 $LEN fleece-track $data 0 $store 8 disk-A" "Store is blank"
dmsetup create tiny --table "0 40 linear $store 0"
bad "0 $LEN fleece-track $data 0 /dev/mapper/tiny 8 disk-A 1 format" "Store device is too small"
dmsetup remove tiny
cmp <(dev_bytes "$store" $STORE_SECTORS) <(head -c $((STORE_SECTORS * 512)) /dev/zero) ||
	fail "a refused table wrote to the store"

log "(b) format; writes mark exactly their chunks"
ima_ok=
if ima_setup; then ima_ok=1; fi
dmsetup create trk --table "$TABLE 1 format"
if [ -n "$ima_ok" ]; then
	assert_eq "$(ima_record fleece-track)" \
		"target_name=fleece-track,target_version=1.1.0,data_name=$(devno data),data_offset=0,store_name=$(devno store),chunk_sectors=8,device_id=disk-A;" \
		"dm-ima's record of the fleece-track table"
fi
assert_eq "$(dmsetup table trk)" "0 $LEN fleece-track $(devno data) 0 $(devno store) 8 disk-A 1 format" "table"
snap
assert_eq "$(status)" "8 $N 1 0 0 1 dirty valid none 0 0 0 clean $(st store_uuid)" "status after format (the last field: the store's UUID)"
[[ $(st store_uuid) =~ ^[0-9a-f]{32}$ ]] || fail "store_uuid on the store: $(st store_uuid)"
expect_set - - "after format"
assert_eq "$(st clean)" 0 "store dirty while live"
S1="0 5 100 32511 32512 32767"
write_chunks $S1
dd if=/dev/urandom of=$trk bs=8k seek=100 count=1 iflag=fullblock oflag=direct conv=notrunc status=none	# chunks 200-201
blkdiscard -z -o $((2000 * CH)) -l $((4 * CH)) $trk	# write-zeroes (or zero writes): 2000-2003
cur1="0,5,100,200-201,2000-2003,32511-32512,32767"
n1=12
merged="0,5,7,100,200-201,2000-2003,30000,32511-32512,32767"	# with epoch 2's
if blkdiscard -o $((3000 * CH)) -l $((16 * CH)) $trk 2> err; then
	cur1="0,5,100,200-201,2000-2003,3000-3015,32511-32512,32767" n1=28
	merged="0,5,7,100,200-201,2000-2003,3000-3015,30000,32511-32512,32767"
else
	log "no discard here ($(cat err)): not checked"
fi
expect_set "$cur1" - "after the first writes"
assert_eq "$(status | cut -d' ' -f3-5)" "1 $n1 0" "status: epoch, changed, changed before"
commits=$(status_field trk 11)
write_chunks 0 5 32767
dd if=$trk of=/dev/null bs=1M iflag=direct status=none
assert_eq "$(status_field trk 11)" "$commits" "commits after writes to marked chunks and reads"
expect_set "$cur1" - "after writes to marked chunks and reads"

log "(c) checkpoint, merge, backup_done"
dmesg_mark
expect_fail dmsetup message trk 0 checkpoint
expect_dmesg_since_mark "checkpoint refused: a device holding the store is not suspended"
dmsetup suspend trk
snap
assert_eq "$(st clean)" 1 "store clean while suspended"
dmsetup message trk 0 checkpoint
dmsetup resume trk
assert_eq "$(status | cut -d' ' -f3-9)" "2 0 $n1 1 dirty valid ready" "status after the checkpoint"
expect_set - "$cur1" "after the checkpoint"
write_chunks 5 7 30000 32767
expect_set "5,7,30000,32767" "$cur1" "epoch 2"
dmsetup message trk 0 merge
assert_eq "$(status_field trk 8)" merged "previous set after merge"
expect_set "$merged" "$cur1" "after merge"
dmesg_mark
expect_fail dmsetup message trk 0 backup_done
expect_dmesg_since_mark "backup_done refused: no previous set ready"
checkpoint
expect_set - "$merged" "second checkpoint"
dmsetup message trk 0 backup_done
assert_eq "$(status | cut -d' ' -f3,5,9)" "3 0 done" "after backup_done"
snap
assert_eq "$(st prev_state)" done "previous set on the store after backup_done"
write_chunks 10 11
checkpoint
write_chunks 12
checkpoint	# the previous set {10,11} was neither done nor merged: kept
expect_set - "10-12" "checkpoint over an unconfirmed previous set"
dmsetup message trk 0 backup_done

log "(d) suspend/resume, reload, re-create keep the set"
write_chunks 1 2 3 32600
# one 8 KiB bio over chunks 32511-32512: across a bitmap block boundary,
# marked in commits of its own before it is issued
dd if=/dev/urandom of=$trk bs=8k count=1 seek=$((32511 * CH)) iflag=fullblock oflag=direct,seek_bytes conv=notrunc status=none
cur4="1-3,32511-32512,32600" n4=6 bad4="0-32512,32600" nbad4=32514
# where the ram disk takes discards, one over chunks 32510-32513: two new
# marks in two bitmap blocks, a bio dm core may not let a target cut
if blkdiscard -o $((32510 * CH)) -l $((4 * CH)) $trk 2> /dev/null; then
	cur4="1-3,32510-32513,32600" n4=8 bad4="0-32513,32600" nbad4=32515
fi
dmsetup suspend trk
dmsetup resume trk
expect_set "$cur4" - "after suspend and resume"
dmsetup load trk --table "$TABLE"
dmsetup suspend trk
dmsetup resume trk
assert_eq "$(status | cut -d' ' -f3-4)" "5 $n4" "status after a reload"
expect_set "$cur4" - "after a reload"
dmesg_mark
expect_fail dmsetup load trk --table "0 $LEN fleece-track $data 0 $store 16 disk-A"
expect_dmesg_since_mark "Store is in use with other arguments"
dmsetup clear trk 2> /dev/null || true
# another device with the same table shares the store (38-track-fleece);
# with other arguments it is refused
bad "0 $LEN fleece-track $data 0 $store 16 disk-A" "Store is in use with other arguments"
bad "0 $LEN fleece-track $data 0 $store 8 disk-B" "Store is in use with other arguments"
store2=$(mkdev store2 1 1)
bad "0 $LEN fleece-track $data 0 $store2 8 disk-B 1 format" "Data device is already tracked"
cmp <(dev_bytes "$store2" $STORE_SECTORS) <(head -c $((STORE_SECTORS * 512)) /dev/zero) ||
	fail "a refused table wrote to store2"
rm_trk
snap
assert_eq "$(st clean)" 1 "store clean after remove"
dmsetup create trk --table "$TABLE"
assert_eq "$(status | cut -d' ' -f3-4,7,13)" "5 $n4 dirty clean" "re-created: epoch, changed, store, as opened"
expect_set "$cur4" - "re-created"
rm_trk

log "(e) torn and corrupted stores"
store_image > good.img
# corrupt SECTOR: 512 bytes of garbage over one sector of the store
corrupt() { head -c 512 /dev/urandom | dd of="$store" bs=512 seek="$1" iflag=fullblock oflag=direct conv=notrunc status=none; }
restore() { dd if=good.img of="$store" bs=512 oflag=direct conv=notrunc status=none; }
seq_now=$("${TS[@]}" show good.img | sed -n 's/^seq=//p')
corrupt $(((seq_now & 1) * 8 + 1))	# the newest superblock slot: torn
dmsetup create trk --table "$TABLE"
assert_eq "$(status | cut -d' ' -f3-4,13)" "5 $n4 unclean" "newest superblock torn: the older (dirty) one"
rm_trk
restore
corrupt $(((2 + (5 & 1) * 2) * 8 + 2))	# bitmap block 0 of epoch 5's area
dmsetup create trk --table "$TABLE"
assert_eq "$(status | cut -d' ' -f4,10)" "$nbad4 1" "corrupted bitmap block: all its chunks changed"
expect_set "$bad4" - "corrupted bitmap block, after the store was opened"
rm_trk
restore
corrupt 1
corrupt 9
store_image > bad.img
bad "$TABLE" "Store is corrupted: no valid superblock"
cmp <(store_image) bad.img || fail "a refused table changed the corrupted store"
restore
bad "0 $LEN fleece-track $data 0 $store 8 disk-B" "Store belongs to another device"
bad "0 $((LEN - 8)) fleece-track $data 0 $store 8 disk-A" "Store was formatted for another device size"
bad "0 $LEN fleece-track $data 0 $store 16 disk-A" "Store was formatted with another chunk size"
dmsetup create short --table "0 40 linear $store 0"	# truncated: the superblocks, not the bitmaps
bad "0 $LEN fleece-track $data 0 /dev/mapper/short 8 disk-A" "Store device is too small"
dmsetup remove short
cmp <(store_image) good.img || fail "a refused table changed the store"

log "(f) crash model: the store frozen at random moments"
dmsetup create trk --table "$TABLE"
# One run of writers through all rounds (a Python start costs seconds under
# TCG): the set grows within one epoch, and every round checks every write
# acknowledged so far.
rm -f acked
"${TS[@]}" writers $trk $CH $N acked "$seed" 4 &
wpid=$!
for ((i = 0; i < 300; i++)); do
	[ -s acked ] && [ "$(wc -l < acked)" -ge 20 ] && break
	sleep 0.1
done
for round in 1 2 3 4; do
	sleep "0.$((RANDOM % 9 + 1))"
	dmsetup suspend --noflush store
	store_image > crash.img
	sleep 0.3	# writers to marked chunks go on meanwhile
	"${TS[@]}" covers crash.img 0 acked $CH > cov || {
		cat cov
		dmsetup resume store
		kill $wpid
		fail "round $round: acknowledged writes not marked on the frozen store"
	}
	echo "# round $round: $(cat cov) status: $(status)"
	cp acked acked.crash	# acknowledged by the time of the "power loss"
	dmsetup resume store
done
kill $wpid
wait $wpid 2> /dev/null || true
[ "$(wc -l < acked.crash)" -gt 0 ] || fail "no write acknowledged"
rm_trk
dd if=crash.img of="$store" bs=512 oflag=direct conv=notrunc status=none	# the power loss
dmsetup create trk --table "$TABLE"
assert_eq "$(status_field trk 12)" unclean "re-created from the crash image"
"${TS[@]}" covers "$store" 0 acked.crash $CH > cov || { cat cov; fail "after the 'reboot': acknowledged writes not marked"; }
assert_eq "$(status_field trk 3)" "$(sed -n 's/.* marked=\([0-9]*\).*/\1/p' cov)" "changed chunks: status and store"

log "(g) a failed store"
checkpoint
write_chunks 0
gen=$(status_field trk 5)
dmsetup load store --table "0 $STORE_SECTORS error"
dmsetup suspend store
dmsetup resume store
dmesg_mark
expect_eio dd if=/dev/urandom of=$trk bs=4k seek=1 count=1 oflag=direct conv=notrunc status=none
expect_dmesg_since_mark "store failed and cannot record the loss"
assert_eq "$(status_field trk 7)" failed "history while the store fails"
[ "$(status_field trk 10)" -gt 0 ] || fail "no store error counted: $(status)"
write_chunks 0	# marked: passes
dmsetup load store --table "0 $STORE_SECTORS linear /dev/ram1 $ram_off"
dmsetup suspend store
dmsetup resume store
write_chunks 1	# the loss is recorded now, and the write passes
expect_dmesg_since_mark "history lost"
assert_eq "$(status | cut -d' ' -f4,6,8)" "$N $((gen + 1)) lost" "changed, generation, history after the loss"
snap
assert_eq "$(st generation) $(st cur_lost) $(st prev_lost)" "$((gen + 1)) 1 1" "the loss on the store"
checkpoint
assert_eq "$(status | cut -d' ' -f4,5,8,9)" "0 $N valid lost" "after a checkpoint: a new, valid history"
write_chunks 9
expect_set 9 "0-$((N - 1))" "history after the loss"
rm_trk
snap
assert_eq "$(st clean)" 1 "clean at the end"

log "(h) commit batching: first writes submitted together share commits"
dmsetup create trk --table "$TABLE"
checkpoint
assert_eq "$(status_field trk 3)" 0 "chunks changed in the new epoch"
# One CPU for the writer and the worker (the worker thread is SCHED_BATCH:
# it runs once the writer waits), as in the bench's VM.  With more CPUs
# both are pinned to CPU 0, or batching would depend on how fast TCG runs
# each vCPU; with one, both are there anyway.
pin=()
if [ "$(nproc)" -gt 1 ]; then
	wk=$(pgrep -nx dm-fleece-track) || fail "no dm-fleece-track worker thread"
	taskset -pc 0 "$wk" > /dev/null
	pin=(--cpus_allowed=0)
fi
NW=1024
c0=$(status_field trk 11)
fio --name=first --filename=$trk --ioengine=libaio --direct=1 --rw=randwrite \
	--bs=$CH --offset=$((1024 * CH)) --size=$((NW * CH)) --iodepth=32 \
	"${pin[@]}" --output=/dev/null || fail "fio failed"
commits=$(($(status_field trk 11) - c0))
echo "# $NW first writes at iodepth 32: $commits commits"
expect_set "1024-$((1024 + NW - 1))" "0-$((N - 1))" "after $NW first writes"
assert_eq "$(status_field trk 3)" $NW "chunks changed after $NW first writes"
[ "$commits" -ge 1 ] && [ "$commits" -le $((NW / 4)) ] ||
	fail "$NW first writes at iodepth 32 took $commits commits: expected 1 to $((NW / 4)) (batched)"
rm_trk
