#!/bin/bash
# fleece-track with fleece: the store shared between mapped devices, the
# fleece target's track_store, prev_extents and the store's UUID in status.
#   (a) the fleece command's hidden-origin move and back, by hand: a second
#       device with the same fleece-track table shares the store; writes
#       through either are marked; the store is dirty while any of them is
#       live and clean once all are suspended (status and on the store);
#       checkpoint is refused (EBUSY) while any is live, accepted from any
#       of them once all are suspended; a rollback (the hidden device
#       removed) leaves the first one tracking
#   (b) fleece ... track_store <store> over the tracked device: at the
#       point in time every fleece chunk that no changed tracker chunk
#       overlaps is released (status field 10, chunks_released); a write to
#       such a chunk copies nothing (copy counters, the fleece device's
#       range still zero) and the view refuses it; changed chunks are copied
#       and the view gives the point in time for them byte for byte; not
#       again at a later resume or reload; fleece chunks larger (default
#       policy) and smaller (fail_origin_writes) than the tracker's
#   (c) prev_extents: the previous set as ranges, equal to the store's, from
#       any chunk on, over several pages (next=); ENODATA (and a kernel log
#       line) with no previous set ready, and when it is lost
#   (d) status field 14 is the store's UUID, a new one after a reformat
#   Fallbacks release nothing and log why: no previous set ready, another
#   length, no tracker holding the store, history lost.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

TS=(python3 "$SRC/tests/track/trackstore.py")
K=1024
TC=16			# tracker chunk: 16 sectors, 8 KiB
NT=2048			# tracker chunks: 16 MiB
LEN=$((NT * TC))

data=$(mkdev data 16)
store=$(mkdev store 1 1)
STORE_SECTORS=2048
ram_off=$(dmsetup table store | awk '{ print $5 }')	# on /dev/ram1
fl=$(mkdev fl 16 1)
mkpattern pat 16 pat
put pat "$data"
TABLE="0 $LEN fleece-track $data 0 $store $TC disk-A"
trk=/dev/mapper/trk

snap() { "${TS[@]}" show "$store" > st; }
st() { sed -n "s/^$1=//p" st; }
# udev probes a device that a writer closed: let it finish before a remove.
rm_dev() { udevadm settle; dmsetup remove --retry "$1"; }
store_state() { # what: field 7 of the tracker's status, and the store's flag
	local dev
	for dev in "${@:2}"; do
		assert_eq "$(status_field "$dev" 6)" "$1" "store in $dev's status"
	done
	snap
	assert_eq "$(st clean)" "$([ "$1" = clean ] && echo 1 || echo 0)" "store on disk ($1 expected)"
}
# One O_DIRECT 4 KiB write of random data at the start of each tracker chunk.
write_tchunks() { "${TS[@]}" write "$1" $((TC * 512)) "${@:2}"; }
wr4k() { # dev byte-offset
	dd if=/dev/urandom of="$1" bs=4k count=1 seek="$2" oflag=direct,seek_bytes conv=notrunc status=none
}
zeros() { head -c "$1" /dev/zero; }
# The store's previous set as prev_extents prints it: "a+n" tokens.
store_prev_extents() {
	snap
	st prev | tr ',' '\n' | awk -F- '$1 != "-" { print $1 "+" (NF == 1 ? 1 : $2 - $1 + 1) }'
}
# All of prev_extents from chunk $2 on, page by page; the number of pages in
# $pages.
prev_extents_all() { # dev first
	local out next=$2 last
	pages=0
	while :; do
		out=$(dmsetup message "$1" 0 prev_extents "$next")
		pages=$((pages + 1))
		last=${out##* }
		[ "$last" = "$out" ] || printf '%s\n' ${out% *}
		case $last in
		end) return 0 ;;
		next=*)
			[ "${last#next=}" -gt "$next" ] || fail "prev_extents from $next: no progress: $last"
			next=${last#next=} ;;
		*) fail "prev_extents from $next: last token '$last'" ;;
		esac
	done
}

# The hidden-origin move (fleece start) with fleece table $1, a checkpoint
# unless $2 is "nockpt", and the move back (fleece stop).
move() { # fleece-table [nockpt]
	dmsetup create trk-fo --table "$TABLE"
	dmsetup load trk --table "$1"
	dmsetup suspend trk
	dmsetup suspend trk-fo
	[ "${2:-}" = nockpt ] || dmsetup message trk-fo 0 checkpoint
	dmsetup resume trk-fo
	dmsetup resume trk
}
move_back() {
	dmsetup suspend trk
	dmsetup suspend trk-fo
	dmsetup load trk --table "$TABLE"
	dmsetup resume trk
	rm_dev trk-fo
}
fleece_table() { # chunk_sectors [feature args...]
	local n=$(($# + 1))
	echo "0 $LEN fleece /dev/mapper/trk-fo $fl $1 $n ${*:2} track_store $store"
}

log "(a) a second device with the same table shares the store"
dmsetup create trk --table "$TABLE 1 format"
store_state dirty trk
snap
assert_eq "$(status_field trk 13)" "$(st store_uuid)" "(d) status field 14: the store's UUID"
uuid1=$(st store_uuid)
dmesg_mark
expect_fail dmsetup message trk 0 prev_extents 0
[[ $T_ERR == *"No data available"* ]] || fail "prev_extents without a previous set: $T_ERR"
expect_dmesg_since_mark "disk-A: prev_extents refused: no previous set ready \(it is none\)"
write_tchunks $trk 0 5 6 7 100
dmsetup create trk-fo --table "$TABLE"
assert_eq "$(dmsetup status trk-fo | cut -d' ' -f4-)" "$(dmsetup status trk | cut -d' ' -f4-)" "the second device's status: the same store"
write_tchunks /dev/mapper/trk-fo 1023 1024
assert_eq "$(status_field trk 3) $(status_field trk-fo 3)" "7 7" "changed chunks, written through both"
dmesg_mark
expect_fail dmsetup message trk 0 checkpoint
[[ $T_ERR == *"Device or resource busy"* ]] || fail "checkpoint while both are live: $T_ERR"
expect_dmesg_since_mark "checkpoint refused: a device holding the store is not suspended"
dmsetup suspend trk-fo
store_state dirty trk trk-fo
expect_fail dmsetup message trk-fo 0 checkpoint
[[ $T_ERR == *"Device or resource busy"* ]] || fail "checkpoint while trk is live: $T_ERR"
dmsetup resume trk-fo
log "rollback: the second device removed, the first keeps tracking"
rm_dev trk-fo
store_state dirty trk
write_tchunks $trk 2047
snap
assert_eq "$(st cur)" "0,5-7,100,1023-1024,2047" "current set on the store after the rollback"
W="0+1 5+3 100+1 1023+2 2047+1"

log "(a)+(b) the move with track_store (fleece chunk 64 > tracker chunk 16, default policy)"
dd if=$trk of=pit.img bs=1M iflag=direct status=none	# the point in time to come
dd if=/dev/zero of="$fl" bs=1M oflag=direct status=none
FC=64 NF=$((LEN / 64))
dmsetup create trk-fo --table "$TABLE"
store_state dirty trk trk-fo
dmsetup load trk --table "$(fleece_table $FC)"
dmsetup suspend trk
store_state dirty trk trk-fo	# trk-fo is live
expect_fail dmsetup message trk-fo 0 checkpoint
[[ $T_ERR == *"Device or resource busy"* ]] || fail "checkpoint while trk-fo is live: $T_ERR"
dmsetup suspend trk-fo
store_state clean trk trk-fo
dmsetup message trk-fo 0 checkpoint
assert_eq "$(dmsetup status trk-fo | cut -d' ' -f6-12)" "2 0 8 1 clean valid ready" "after the checkpoint: epoch, changed, before, generation, store, history, previous"
log "(c) prev_extents through either device, from any chunk"
assert_eq "$(dmsetup message trk 0 prev_extents 0)" "$W end" "prev_extents 0 (trk, suspended)"
assert_eq "$(dmsetup message trk-fo 0 prev_extents 6)" "6+2 100+1 1023+2 2047+1 end" "prev_extents 6"
assert_eq "$(dmsetup message trk-fo 0 prev_extents 2047)" "2047+1 end" "prev_extents 2047"
assert_eq "$(dmsetup message trk-fo 0 prev_extents 2048)" "end" "prev_extents past the end"
assert_eq "$(store_prev_extents | tr '\n' ' ')" "$W " "the store's previous set"
expect_fail dmsetup message trk-fo 0 prev_extents x1
expect_fail dmsetup message trk-fo 0 prev_extents
dmsetup resume trk-fo
store_state dirty trk-fo
dmesg_mark
dmsetup resume trk	# the point in time
# tracker chunks 0 5-7 100 1023-1024 2047 lie in fleece chunks 0 1 25 255 256 511
rel=$((NF - 6))
expect_dmesg_since_mark "track_store .*: $rel of $NF chunks unchanged, released"
assert_eq "$(status_field trk 9)" "$rel" "status field 10: chunks released by track_store"
assert_eq "$(fleece_counts trk)" "6 0 $rel 0 0 active" "fleece status at the point in time"
vw=$(view_create vw /dev/mapper/trk-fo "$fl")
log "a write to a released chunk copies nothing; to a changed one, it does"
wr4k $trk $((100 * 32 * K))	# fleece chunk 100: released
assert_eq "$(fleece_counts trk)" "6 0 $rel 0 0 active" "after a write to a released chunk"
cmp <(dev_range "$fl" $((100 * 32)) 32) <(zeros $((32 * K))) || fail "fleece device written for a released chunk"
expect_eio dd if="$vw" of=/dev/null bs=32k skip=100 count=1 iflag=direct
wr4k $trk $((25 * 32 * K + 8 * K))	# fleece chunk 25 (tracker chunk 101; 100 changed)
assert_eq "$(fleece_counts trk)" "5 1 $rel 1 0 active" "after a write to a changed chunk"
for c in 0 1 25 255 256 511; do
	cmp <(dev_range "$vw" $((c * 32)) 32) <(file_range pit.img $((c * 32)) 32) ||
		fail "view chunk $c differs from the point in time"
done
cmp <(dev_range "$fl" $((25 * 32)) 32) <(file_range pit.img $((25 * 32)) 32) ||
	fail "fleece device: chunk 25's copy"
assert_eq "$(status_field trk-fo 3)" 2 "the tracker marked the writes through the fleece"
log "not again at a later resume or reload"
dmesg_mark
dmsetup suspend trk
dmsetup resume trk
dmsetup load trk --table "$(fleece_table $FC)"
dmsetup suspend trk
dmsetup resume trk
assert_eq "$(status_field trk 9) $(status_field trk 4)" "$rel $rel" "after a resume and a reload: field 10, released"
if dmesg_since_mark | grep_q "chunks unchanged, released"; then
	fail "track_store applied again: $(dmesg_since_mark)"
fi
assert_eq "$(dmsetup table trk)" "0 $LEN fleece $(devno trk-fo) $(devno fl) 64 2 track_store $(devno store)" "table"
log "(a) the move back"
rm_dev vw
dmsetup suspend trk
store_state dirty trk-fo
dmsetup suspend trk-fo
store_state clean trk-fo
dmsetup load trk --table "$TABLE"
dmsetup resume trk
store_state dirty trk trk-fo
rm_dev trk-fo
store_state dirty trk
assert_eq "$(dmsetup status trk | cut -d' ' -f6-8)" "2 2 8" "epoch, changed, before after the move back"
write_tchunks $trk 3
snap
assert_eq "$(st cur)" "3,101,400" "current set: the writes through the fleece and after"
dmsetup message trk 0 backup_done

log "(b) fleece chunk 8 < tracker chunk 16, fail_origin_writes"
write_tchunks $trk 1500 2047
dd if=$trk of=pit.img bs=1M iflag=direct status=none
dd if=/dev/zero of="$fl" bs=1M oflag=direct status=none
FC=8 NF=$((LEN / 8))
dmesg_mark
move "$(fleece_table $FC fail_origin_writes)"
# tracker chunks 3 101 400 1500 2047: fleece chunks 6-7 202-203 800-801 3000-3001 4094-4095
rel=$((NF - 10))
expect_dmesg_since_mark "track_store .*: $rel of $NF chunks unchanged, released"
assert_eq "$(dmsetup message trk-fo 0 prev_extents 0)" "3+1 101+1 400+1 1500+1 2047+1 end" "prev_extents"
assert_eq "$(fleece_counts trk)" "10 0 $rel 0 0 active" "fleece status at the point in time"
vw=$(view_create vw /dev/mapper/trk-fo "$fl")
wr4k $trk 0	# fleece chunk 0: released
wr4k $trk $((5 * 4 * K))
assert_eq "$(fleece_counts trk)" "10 0 $rel 0 0 active" "after writes to released chunks"
cmp <(dev_range "$fl" 0 24) <(zeros $((24 * K))) || fail "fleece device written for released chunks"
expect_eio dd if="$vw" of=/dev/null bs=4k count=1 iflag=direct
wr4k $trk $((7 * 4 * K))	# changed
wr4k $trk $((4094 * 4 * K))
assert_eq "$(fleece_counts trk)" "8 2 $rel 2 0 active" "after writes to changed chunks"
for c in 6 7 202 203 800 801 3000 3001 4094 4095; do
	cmp <(dev_range "$vw" $((c * 4)) 4) <(file_range pit.img $((c * 4)) 4) ||
		fail "view chunk $c differs from the point in time"
done
rm_dev vw
move_back

log "fallback: another length"
dmesg_mark
move "0 $((LEN - 64)) fleece /dev/mapper/trk-fo $fl 64 2 track_store $store"
expect_dmesg_since_mark "track_store .*: nothing released: the tracked length differs from the fleece region's"
assert_eq "$(status_field trk 9) $(status_field trk 4)" "0 0" "another length: field 10, released"
move_back

log "fallback: no previous set ready"
dmsetup message trk 0 backup_done
dmesg_mark
expect_fail dmsetup message trk 0 prev_extents 0
[[ $T_ERR == *"No data available"* ]] || fail "prev_extents after backup_done: $T_ERR"
expect_dmesg_since_mark "prev_extents refused: no previous set ready \(it is done\)"
dmesg_mark
move "$(fleece_table 64)" nockpt
expect_dmesg_since_mark "track_store .*: nothing released: no previous set ready: its backup is done or merged"
assert_eq "$(status_field trk 9) $(status_field trk 4)" "0 0" "no previous set: field 10, released"
move_back

log "fallback: no tracker holds the store"
other=$(mkdev other 1 1)
otherfl=$(mkdev otherfl 1 1)
dmesg_mark
dmsetup create fx --table "0 2048 fleece $other $otherfl 8 2 track_store $fl"
expect_dmesg_since_mark "track_store .*: nothing released: no fleece-track table holds the store"
assert_eq "$(status_field fx 9) $(status_field fx 4)" "0 0" "no tracker: field 10, released"
assert_eq "$(dmsetup table fx)" "0 2048 fleece $(devno other) $(devno otherfl) 8 2 track_store $(devno fl)" "table"
rm_dev fx
dmesg_mark
expect_fail dmsetup create fx --table "0 2048 fleece $other $otherfl 8 2 track_store $other"
expect_dmesg_since_mark "track_store must differ from the origin and fleece devices"
expect_fail dmsetup create fx --table "0 2048 fleece $other $otherfl 8 1 track_store"
expect_dmesg_since_mark "Feature track_store needs a device"

log "fallback: history lost"
dmsetup suspend trk
dmsetup message trk 0 checkpoint
dmsetup resume trk
dmsetup load store --table "0 $STORE_SECTORS error"
dmsetup suspend store
dmsetup resume store
expect_eio dd if=/dev/urandom of=$trk bs=4k seek=1 count=1 oflag=direct conv=notrunc status=none
dmsetup load store --table "0 $STORE_SECTORS linear /dev/ram1 $ram_off"
dmsetup suspend store
dmsetup resume store
write_tchunks $trk 1	# the loss is recorded now
assert_eq "$(status_field trk 7)" lost "history"
dmesg_mark
move "$(fleece_table 64)"
expect_dmesg_since_mark "track_store .*: nothing released: the history was lost before the last checkpoint"
assert_eq "$(status_field trk 9) $(status_field trk 4)" "0 0" "history lost: field 10, released"
dmesg_mark
expect_fail dmsetup message trk-fo 0 prev_extents 0
[[ $T_ERR == *"No data available"* ]] || fail "prev_extents with the history lost: $T_ERR"
expect_dmesg_since_mark "prev_extents refused: no previous set ready \(it is lost\)"
move_back
rm_dev trk
store_state clean

log "(d) a reformatted store has a new UUID"
dd if=/dev/zero of="$store" bs=4k count=2 oflag=direct status=none
dmsetup create trk --table "$TABLE 1 format"
snap
[ "$(st store_uuid)" != "$uuid1" ] || fail "the reformatted store kept its UUID"
assert_eq "$(status_field trk 13)" "$(st store_uuid)" "status field 14 after a reformat"
rm_dev trk

log "(c) prev_extents over several pages: 128 MiB at 4 KiB chunks"
N=32768
big=$(mkdev big 128 2)
bstore=$(mkdev bstore 1 2)
dmsetup create bt --table "0 $((N * 8)) fleece-track $big 0 $bstore 8 disk-B 1 format"
# every third chunk, and one 64 KiB write over chunks 32500-32515, across
# the bitmap block boundary at 32512
# (four writers: their first writes to chunks share commits)
wpids=()
for i in 0 1 2 3; do
	"${TS[@]}" write /dev/mapper/bt 4096 $(seq $((i * 3)) 12 $((N - 1))) &
	wpids+=($!)
done
for p in "${wpids[@]}"; do wait "$p" || fail "a writer failed"; done
dd if=/dev/urandom of=/dev/mapper/bt bs=64k count=1 seek=$((32500 * 4096)) oflag=direct,seek_bytes conv=notrunc status=none
dmsetup suspend bt
dmsetup message bt 0 checkpoint
dmsetup resume bt
"${TS[@]}" show "$bstore" > st
st prev | tr ',' '\n' | awk -F- '{ print $1 "+" (NF == 1 ? 1 : $2 - $1 + 1) }' > want
prev_extents_all bt 0 > got
[ "$pages" -ge 3 ] || fail "prev_extents took $pages pages: no pagination seen"
cmp got want || { diff got want | head; fail "prev_extents differs from the store's previous set"; }
echo "# $(wc -l < got) ranges in $pages pages"
prev_extents_all bt 32510 > got
# from chunk 32510 on: the run 32499-32515 cut at 32510
awk -F+ '$1 + $2 > 32510 { a = $1 < 32510 ? 32510 : $1; print a "+" ($1 + $2 - a) }' want > want2
grep_q -x "32510+6" want2 || fail "the run over 32510 is not 32499-32515: $(head -c 300 want2)"
cmp got want2 || { diff got want2 | head; fail "prev_extents from 32510"; }
rm_dev bt
