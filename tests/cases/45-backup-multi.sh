#!/bin/bash
# fleece backup A B -o DIR/: several devices at one point in time, one
# image each (DIR/NAME.img), one exit status.
#  - a writer alternates between A and B (A gets 1, B gets 2, A gets 3,
#    ...) through the whole backup: the images hold consecutive numbers
#    (one point in time), the rest of each image is its device's data;
#  - arguments refused before anything is touched (exit 2);
#  - an output that cannot be created refuses all before the start (exit 3,
#    nothing left);
#  - the output's file system full during the second image: the first is
#    complete, exit 1, nothing else left;
#  - SIGTERM while the first is read: both stopped, exit 143, nothing left.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
shopt -s nullglob dotglob

a=$(mkdev da 16)
b=$(mkdev db 16)
mkpattern pa 16 pa
mkpattern pb 16 pb
put pa "$a"
put pb "$b"
ta=$(dmsetup table da)
tb=$(dmsetup table db)
fsdev=$(mkdev fsdev 64 1)
mkfs.ext4 -q -F "$fsdev"
mkdir -p /mnt/fdir imgs
mount "$fsdev" /mnt/fdir

# Nothing of a fleece is left: no FLEECE- device, no loop device, no
# fleece file, no state file, no FILE.partial.
nothing_left() { # what
	local info f
	info=$(dmsetup info -c --noheadings -o name,uuid --separator ' ')
	[[ $info != *FLEECE-* ]] || fail "$1: FLEECE- devices left: $info"
	f=(/sys/block/loop*/loop)
	[ ${#f[@]} = 0 ] || fail "$1: loop devices left: ${f[*]}"
	f=(/mnt/fdir/*.fleece state/* imgs/*.partial)
	[ ${#f[@]} = 0 ] || fail "$1: files left: ${f[*]}"
}

# Arguments refused before anything is touched.
step "usage errors"
check() { # status regex command...
	local want=$1 re=$2
	shift 2
	expect_exit "$want" "$@"
	[[ $T_ERR =~ $re ]] || fail "$*: message '$T_ERR' does not match '$re'"
}
check 2 "one device at a time to a file.*-o DIR/" $F backup --fleece-dir /mnt/fdir da db -o out.img
check 2 "one device at a time to a file" $F backup --fleece-dir /mnt/fdir da db -o -
check 2 "-o nodir/: not a directory" $F backup --fleece-dir /mnt/fdir da db -o nodir/
check 2 "2 devices, 1 --fleece-dev: give one each" $F backup --fleece-dev /dev/mapper/fsdev da db -o imgs/
check 2 "--incremental and --changed-map: one device at a time" $F backup --incremental --fleece-dir /mnt/fdir da db -o imgs/
check 2 "da given twice" $F backup --fleece-dir /mnt/fdir da /dev/mapper/da -o imgs/
f=(imgs/*)
[ ${#f[@]} = 0 ] || fail "usage errors: files made: ${f[*]}"
nothing_left "usage errors"

# --- one point in time -------------------------------------------------------
seqof() { head -c 20 "$1" | sed 's/^0*//'; }

step "A and B at one point in time, a writer going"
ab_writer "$a" "$b" "$PWD/stop.flag" > writer.log 2>&1 &
wpid=$!
for i in $(seq 1 100); do [ -s last ] && break; sleep 0.1; done
[ -s last ] || { cat writer.log; fail "the writer does not write"; }
before=$(cat last)
rc=0
$F backup --fleece-dir /mnt/fdir --sha256 -p lines -i 1 da db -o imgs/ > backup.out 2> backup.err || rc=$?
after=$(cat last)
touch stop.flag
wait $wpid || { cat writer.log; fail "the writer failed"; }
cat backup.out backup.err
assert_eq "$rc" 0 "exit status of the backup of two"
grep -q "one point in time for 2 devices" backup.err || fail "start does not say one point in time"
grep -q "^fleece backup: 2 images at one point in time in imgs/$" backup.err || fail "no summary line"
[ -f imgs/da.img ] && [ -f imgs/db.img ] || fail "imgs/da.img or imgs/db.img missing"
sa=$(seqof imgs/da.img)
sb=$(seqof imgs/db.img)
step "writer went from $before to $after; images: A=$sa B=$sb"
[ "$after" -gt $((before + 10)) ] || fail "the writer made no progress during the backup"
[ "$sa" -ge "$before" ] && [ "$sb" -ge "$before" ] || fail "images older than the backup"
d=$((sa - sb)); d=${d#-}
assert_eq "$d" 1 "distance between the last numbers in the two images (A=$sa B=$sb)"
[ $((sa % 2)) = 1 ] && [ $((sb % 2)) = 0 ] || fail "odd numbers go to A, even to B: A=$sa B=$sb"
cmp <(tail -c +4097 imgs/da.img) <(tail -c +4097 pa) || fail "da.img differs from da's data"
cmp <(tail -c +4097 imgs/db.img) <(tail -c +4097 pb) || fail "db.img differs from db's data"
assert_eq "$(grep -c 'imgs/d[ab].img$' backup.out)" 2 "--sha256 lines"
grep -q "^$(sha256sum < imgs/da.img | cut -d' ' -f1)  imgs/da.img$" backup.out || fail "da.img's --sha256"
grep -q "^$(sha256sum < imgs/db.img | cut -d' ' -f1)  imgs/db.img$" backup.out || fail "db.img's --sha256"
assert_eq "$(stat -c %a imgs/da.img) $(stat -c %a imgs/db.img)" "600 600" "modes of the images"
nothing_left "after the backup of two"
rm -f imgs/*.img

# --- failures ----------------------------------------------------------------
step "an output that cannot be created: all refused before the start"
echo "another run's" > imgs/db.img.partial
expect_exit 3 $F backup --fleece-dir /mnt/fdir da db -o imgs/
[[ $T_ERR == *"imgs/db.img.partial exists"* ]] || fail "no reason given: $T_ERR"
assert_eq "$(cat imgs/db.img.partial)" "another run's" "the other run's partial file"
rm imgs/db.img.partial
f=(imgs/*)
[ ${#f[@]} = 0 ] || fail "refused: files made: ${f[*]}"
nothing_left "refused before the start"

step "the output's file system full during the second image: the first complete, exit 1"
# 24 MiB of ext4: room for one 16 MiB image of random data, not two.
small=$(mkdev small 24 1)
mkfs.ext4 -q -F "$small"
mkdir -p /mnt/imgs
mount "$small" /mnt/imgs
expect_exit 1 $F backup --fleece-dir /mnt/fdir da db -o /mnt/imgs/
[[ $T_ERR == *"db: cannot write the output: No space left on device"* ]] || fail "no reason for db's failure: $T_ERR"
[[ $T_ERR == *"removed the incomplete image /mnt/imgs/db.img.partial"* ]] || fail "db's partial image not said removed: $T_ERR"
[[ $T_ERR == *"1 of 2 images at one point in time are not complete (removed): /mnt/imgs/"* ]] || fail "no summary of the failure: $T_ERR"
cmp <(tail -c +4097 /mnt/imgs/da.img) <(tail -c +4097 pa) || fail "da.img differs from da's data"
f=(/mnt/imgs/*)
assert_eq "${f[*]}" "/mnt/imgs/da.img /mnt/imgs/lost+found" "files in the output directory"
umount /mnt/imgs
nothing_left "one of two failed"

step "SIGTERM while the first is read: both stopped"
$F backup --fleece-dir /mnt/fdir --rate 2M --block-size 1M -p lines -i 1 da db -o imgs/ 2> term.err &
bpid=$!
for i in $(seq 1 300); do
	grep -q "MiB of 16.0 MiB" term.err 2>/dev/null && break
	sleep 0.1
done
grep -q "MiB of 16.0 MiB" term.err || { cat term.err; fail "the backup makes no progress"; }
kill -TERM $bpid
rc=0; wait $bpid || rc=$?
cat term.err
assert_eq "$rc" 143 "exit status after SIGTERM"
f=(imgs/*)
[ ${#f[@]} = 0 ] || fail "SIGTERM: files left: ${f[*]}"
nothing_left "SIGTERM"
assert_eq "$(dmsetup table da) / $(dmsetup table db)" "$ta / $tb" "the tables of da and db"
cmp <(dd if="$a" bs=1M iflag=direct status=none | tail -c +4097) <(tail -c +4097 pa) || fail "da's data changed"
umount /mnt/fdir
step "ok"
