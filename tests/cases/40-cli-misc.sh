#!/bin/bash
# Smaller promises of fleece(8):
#  1. under nohup, a hang-up does not stop a backup;
#  2. with standard output closed at exec, -o - is refused (exit 2), and the
#     image goes nowhere else;
#  3. one reader per view: a second fleece read of a view being read is
#     refused (exit 3) and the first completes, right;
#  4. a NAME containing ".tmp" is not hidden from status and stop --all,
#     and fleecing NAME does not overwrite the state of NAME.tmp;
#  5. stop VG/LV and /dev/VG/LV of an LV that is gone work on lvm2's dm
#     name (VG-LV, hyphens doubled), not on "LV";
#  6. start of a suspended device (dmsetup suspend) is refused (exit 3,
#     "NAME: is suspended: resume it first") and changes nothing: the
#     device is still suspended with its table, no inactive table, no
#     state file, fleece file, loop or FLEECE- device; it then resumes.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 32

step "1. nohup: SIGHUP is ignored"
nohup $F backup -q --fleece-dir /mnt/fdir --rate 2M data -o out.img > nohup.log 2>&1 &
bpid=$!
for i in $(seq 1 300); do
	[ -e out.img.partial ] && [ -b /dev/mapper/data-fleece-view ] && break
	kill -0 $bpid 2>/dev/null || { cat nohup.log; fail "the backup ended early"; }
	sleep 0.1
done
kill -HUP $bpid
rc=0; wait $bpid || rc=$?
cat nohup.log
assert_eq "$rc" 0 "exit status of the backup after SIGHUP under nohup"
cmp out.img pat || fail "the image after SIGHUP"
rm out.img nohup.log
as_before "nohup"

step "2. standard output closed"
rc=0; $F backup --fleece-dir /mnt/fdir data -o - >&- 2> closed.err || rc=$?
cat closed.err
assert_eq "$rc" 2 "exit status with standard output closed"
grep -q "standard output is closed" closed.err || fail "no reason given"
rm closed.err
as_before "stdout closed"

step "3. one reader per view"
$F start -q --fleece-dir /mnt/fdir data
$F read -q --rate 2M /dev/mapper/data-fleece-view -o a.img 2> a.err &
rpid=$!
for i in $(seq 1 300); do
	[ -e a.img.partial ] && break
	kill -0 $rpid 2>/dev/null || { cat a.err; fail "the first reader ended early"; }
	sleep 0.1
done
expect_exit 3 $F read -q /dev/mapper/data-fleece-view -o b.img
echo "$T_ERR"
[[ $T_ERR == *"in use"* ]] || fail "second reader: no reason given"
[ ! -e b.img ] && [ ! -e b.img.partial ] || fail "the refused reader left output"
wait $rpid || { cat a.err; fail "the first reader failed"; }
cmp a.img pat || fail "the first reader's image"
$F stop -q data
rm a.img a.err
as_before "two readers"

step "4. a NAME with .tmp in it (a state file left after a reboot)"
mkdir -p state
touch /mnt/fdir/data.tmp.fleece
printf 'phase=running\nfleece_file=/mnt/fdir/data.tmp.fleece\n' > state/data.tmp
cp state/data.tmp data.tmp.state
$F start -q --fleece-dir /mnt/fdir data
cmp state/data.tmp data.tmp.state || fail "fleecing data overwrote the state of data.tmp"
$F stop -q data
rc=0; $F status > status.out || rc=$?
cat status.out
grep -q "^data.tmp: incomplete" status.out || fail "status does not show data.tmp"
assert_eq "$rc" 1 "status of an incomplete fleece"
$F stop --all
[ ! -e /mnt/fdir/data.tmp.fleece ] || fail "stop --all left data.tmp's fleece file"
[ -z "$(ls -A state)" ] || fail "state left: $(ls -A state)"
rm status.out data.tmp.state
as_before ".tmp"

step "5. stop VG/LV of a device that is gone"
mkdir -p state
echo "half" > out.img.partial
printf 'phase=running\npartial=%s/out.img.partial\n' "$PWD" > state/my--vg-l--v
$F stop my-vg/l-v 2>&1 | tee stop.out
grep -q "my--vg-l--v: stopped" stop.out || fail "stop VG/LV: $(cat stop.out)"
[ ! -e state/my--vg-l--v ] && [ ! -e out.img.partial ] || fail "stop VG/LV left its files"
printf 'phase=running\n' > state/vg-lv
$F stop /dev/vg/lv 2>&1 | tee stop.out
grep -q "vg-lv: stopped" stop.out || fail "stop /dev/VG/LV: $(cat stop.out)"
rm stop.out
as_before "VG/LV"

step "6. start of a suspended device"
dmsetup suspend data
# timeout: a start that did I/O to the suspended device would hang there
expect_exit 3 timeout 120 $F start -q --fleece-dir /mnt/fdir data
echo "$T_ERR"
[[ $T_ERR == *"data: is suspended: resume it first"* ]] || fail "start of a suspended device: not the documented message: $T_ERR"
info=$(dmsetup info -c --noheadings -o name,uuid,attr --separator ' ')
echo "$info"
[[ $info != *FLEECE-* ]] || fail "the refused start left FLEECE- devices: $info"
# attr: (L)ive, (I)nactive, (s)uspended, read-(w)rite
[[ $'\n'$info$'\n' =~ $'\n'data\ +L-sw\ *$'\n' ]] ||
	fail "data is not suspended with only its live table after the refused start: $info"
assert_eq "$(dmsetup table data)" "$table" "table of data after the refused start"
f=(/sys/block/loop*/loop /mnt/fdir/* state/*)
[ "${f[*]}" = /mnt/fdir/lost+found ] || fail "the refused start left: ${f[*]}"
dmsetup resume data
as_before "suspended"
umount /mnt/fdir
step "ok"
