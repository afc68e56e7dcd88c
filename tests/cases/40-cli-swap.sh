#!/bin/bash
# The table swap of fleece start:
#  1. NAME's table changes between the moment start reads it and the swap
#     (an lvextend: reload + resume), in both layouts (fleece in the linear's
#     place, hidden origin): start fails, NAME keeps the new table, nothing
#     of the fleece is left;
#  2. another tool replaces the inactive fleece table (reload, no resume):
#     start fails, NAME's live table is unchanged, the other table is not
#     swapped in;
#  3. a read-only device stays read-only while fleeced and after stop (its
#     hidden origin too), and its backup is right.
# Start is held at the point just before the suspend with the test-only
# fault hook FLEECE_FAULT=before-suspend=STOP (tools/util.c).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
data=$(mkdev data 16)
mkpattern pat 16 pat
put pat "$data"
table=$(dmsetup table data)
fl=$(mkdev fl 16 1)
two0=$(mkdev two0 8 2)
two1=$(mkdev two1 8 2)
twotable="0 16384 linear $two0 0
16384 16384 linear $two1 0"
dmsetup create two --table "$twotable"
twolive=$(dmsetup table two)	# as dmsetup shows it: major:minor
grown=$(mkdev grown 24 3)
growntable=$(dmsetup table grown)
dmsetup remove grown
pid=

nothing_left() { # what
	local u
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: state left: $(ls state)"
}
# start NAME in the background, held before its suspend
start_held() { # name
	run_held start.out env FLEECE_FAULT=before-suspend=STOP $F start --fleece-dev "$fl" "$1"
}
# let it go on; it must fail (exit 1) with a message matching REGEX
start_fails() { # regex what
	local rc=0
	kill -CONT $pid
	wait $pid || rc=$?
	pid=
	cat start.out
	assert_eq "$rc" 1 "$2: exit status of start"
	grep -Eq "$1" start.out || fail "$2: no message matching '$1'"
}
inactive() { dmsetup info "$1" | grep -q "Tables present:.*INACTIVE"; }

step "1. the table changes before the swap (linear layout: an lvextend)"
start_held data
dmsetup reload data --table "$growntable"
dmsetup resume data
start_fails "its table changed" "lvextend, linear"
assert_eq "$(dmsetup table data)" "$growntable" "data keeps the new table"
! inactive data || fail "data has an inactive table left"
nothing_left "lvextend, linear"
dmsetup reload data --table "$table"
dmsetup resume data
same "$data" pat "data after the refused start"

step "1. the table changes before the swap (hidden origin layout)"
start_held two
dmsetup info two-fleece-origin > /dev/null || fail "no hidden origin while held"
dmsetup reload two --table "$growntable"
dmsetup resume two
start_fails "its table changed" "lvextend, hidden origin"
assert_eq "$(dmsetup table two)" "$growntable" "two keeps the new table"
nothing_left "lvextend, hidden origin"
dmsetup reload two --table "$twotable"
dmsetup resume two

step "2. another tool replaces the inactive fleece table"
start_held data
dmsetup reload data --table "$growntable"
start_fails "replaced the table fleece loaded" "inactive table replaced"
assert_eq "$(dmsetup table data)" "$table" "data's live table"
! inactive data || fail "the other tool's table is still loaded, to be swapped in later"
nothing_left "inactive table replaced"
same "$data" pat "data after the refused start"

step "3. a read-only device stays read-only"
dmsetup remove data
dmsetup create --readonly data --table "$table"
assert_eq "$(blockdev --getro /dev/mapper/data)" 1 "data read-only before"
$F start -q --fleece-dev "$fl" data
assert_eq "$(blockdev --getro /dev/mapper/data)" 1 "data read-only while fleeced"
dmsetup table data | grep -q " fleece " || fail "data is not fleeced"
same /dev/mapper/data-fleece-view pat "the view of the read-only device"
$F stop -q data
assert_eq "$(blockdev --getro /dev/mapper/data)" 1 "data read-only after stop"
assert_eq "$(dmsetup table data)" "$table" "data's table after stop"
$F backup -q --fleece-dev "$fl" data -o ro.img
cmp ro.img pat || fail "the backup of the read-only device"
assert_eq "$(blockdev --getro /dev/mapper/data)" 1 "data read-only after backup"
rm ro.img

step "3. a read-only device with a hidden origin"
dmsetup remove two
dmsetup create --readonly two --table "$twotable"
$F start -q --fleece-dev "$fl" two
assert_eq "$(blockdev --getro /dev/mapper/two)" 1 "two read-only while fleeced"
assert_eq "$(blockdev --getro /dev/mapper/two-fleece-origin)" 1 "the hidden origin read-only"
$F stop -q two
assert_eq "$(blockdev --getro /dev/mapper/two)" 1 "two read-only after stop"
assert_eq "$(dmsetup table two)" "$twolive" "two's table after stop"
nothing_left "read-only"
step "ok"
