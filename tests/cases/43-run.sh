#!/bin/bash
# fleece run NAME... -- CMD: start, run CMD on the views, stop, CMD's status.
#  1. one NAME: FLEECE_VIEW/FLEECE_NAME/..._1/...S in CMD's environment (and
#     stale ones removed), each {} in ARGS replaced; CMD reads the point in
#     time (the device written meanwhile), its standard output passes through;
#     it ignores no signal that fleece run did not (SIGPIPE);
#  2. two NAMEs: FLEECE_VIEW_1/_2, FLEECE_VIEWS, no FLEECE_VIEW; {} refused;
#  3. exit status: CMD's (7), 128 + N when signal N killed it, 127 / 126
#     when CMD is not found / cannot be run; nothing left each time;
#  4. SIGTERM to fleece run mid-CMD: passed on to CMD, waited for, stopped;
#     a burst of SIGTERMs while it stops leaves nothing behind either;
#     SIGKILL of fleece run: CMD gets SIGTERM, "fleece stop" cleans up;
#  5. the view invalidated while CMD runs: exit 125 even though CMD exits 0;
#  6. start fails (no such device, a device already fleeced, no fleece
#     space): exit 125, CMD not run;
#  7. bad usage: exit 125 and a message naming the problem; --help exits 0.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 32
fl=$(mkdev fl 16 1)
D=(--fleece-dev "$fl")

step "1. one NAME: environment, {}, the point in time on standard output"
# CMD: writes to data after the point in time (CMD runs after the start),
# prints its environment and arguments to env.out, the view to stdout.
cat > cmd1.sh <<'EOF'
dd if=/dev/urandom of=/dev/mapper/data bs=64k count=16 seek=3 oflag=direct status=none
{ env | grep '^FLEECE_\(VIEW\|NAME\)' | LC_ALL=C sort; printf 'arg=%s\n' "$@"; } > env.out
exec cat "$FLEECE_VIEW"
EOF
FLEECE_VIEW_3=stale FLEECE_NAMES=stale $F run -q "${D[@]}" data -- sh cmd1.sh {} 'x{}y{}' '{' > out.img
cat env.out
cmp out.img pat || fail "CMD's standard output is not the point in time"
v=/dev/mapper/data-fleece-view
assert_eq "$(cat env.out)" "FLEECE_NAME=data
FLEECE_NAMES=data
FLEECE_NAME_1=data
FLEECE_VIEW=$v
FLEECE_VIEWS=$v
FLEECE_VIEW_1=$v
arg=$v
arg=x${v}y$v
arg={" "environment and arguments of CMD"
rm out.img
put pat "$data"
# CMD gets the signal dispositions fleece got (fleece ignores SIGPIPE).
assert_eq "$($F run -q "${D[@]}" data -- awk '/^SigIgn/ { print $2 }' /proc/self/status)" \
	"$(awk '/^SigIgn/ { print $2 }' /proc/self/status)" "signals CMD ignores"
as_before "one NAME"

step "2. two NAMEs: FLEECE_VIEW_1, _2, FLEECE_VIEWS; {} refused"
d2=$(mkdev d2 8)
t2=$(dmsetup table d2)
FLEECE_VIEW=stale FLEECE_NAME=stale $F run -q --fleece-dir /mnt/fdir data d2 -- \
	sh -c 'env | grep "^FLEECE_\(VIEW\|NAME\)" | LC_ALL=C sort > env.out; cmp "$FLEECE_VIEW_1" pat'
assert_eq "$(cat env.out)" "FLEECE_NAMES=data d2
FLEECE_NAME_1=data
FLEECE_NAME_2=d2
FLEECE_VIEWS=/dev/mapper/data-fleece-view /dev/mapper/d2-fleece-view
FLEECE_VIEW_1=/dev/mapper/data-fleece-view
FLEECE_VIEW_2=/dev/mapper/d2-fleece-view" "environment of CMD with two NAMEs"
expect_exit 125 $F run --fleece-dir /mnt/fdir data d2 -- cat {}
[[ $T_ERR == *"'{}' stands for the view of one device"* ]] || fail "{} with two NAMEs: $T_ERR"
assert_eq "$(dmsetup table d2)" "$t2" "d2's table"
dmsetup remove d2
as_before "two NAMEs"

step "3. exit status: CMD's, 128 + signal, 127, 126"
expect_exit 7 $F run -q "${D[@]}" data -- sh -c 'exit 7'
as_before "exit 7"
expect_exit 138 $F run -q "${D[@]}" data -- sh -c 'kill -USR1 $$'
[[ $T_ERR == *"killed by signal 10"* ]] || fail "death by signal not reported: $T_ERR"
as_before "killed by SIGUSR1"
expect_exit 127 $F run -q "${D[@]}" data -- /nonexistent/cmd
[[ $T_ERR == *"cannot run '/nonexistent/cmd': No such file or directory"* ]] || fail "127: $T_ERR"
as_before "not found"
expect_exit 126 $F run -q "${D[@]}" data -- "$PWD/pat"
[[ $T_ERR == *"Permission denied"* ]] || fail "126: $T_ERR"
as_before "not executable"

step "4. SIGTERM to fleece run mid-CMD, a burst of them, SIGKILL"
# CMD: says it runs, then sleeps; a TERM ends it with status 3 after 1 s
# (further TERMs ignored: a burst of them must not keep it running).
cat > cmd4.sh <<'EOF'
trap 'trap "" TERM; echo TERM >> term.log; sleep 1; exit 3' TERM
: > running
while :; do sleep 0.1; done
EOF
# A process is alive until it exits (a zombie has, even when not yet reaped).
# Builtins only: on the debug kernel a program's start takes about a second,
# and the burst below sent only 2 signals with awk here (comm has no spaces).
alive() { local _p _c st; read -r _p _c st _ 2>/dev/null < "/proc/$1/stat" && [ "$st" != Z ]; }
wait_running() { # pid err
	local i
	for i in $(seq 1 300); do
		[ -e running ] && return 0
		alive "$1" || { cat "$2"; fail "fleece run ended before CMD ran"; }
		sleep 0.1
	done
	fail "CMD does not run"
}
rm -f running term.log
$F run "${D[@]}" data -- sh cmd4.sh 2> run.err &
pid=$!
wait_running $pid run.err
kill -TERM $pid
rc=0; wait $pid || rc=$?
cat run.err
assert_eq "$rc" 3 "exit status after SIGTERM (CMD's own)"
assert_eq "$(cat term.log)" TERM "SIGTERM passed on to CMD, once"
grep -q "signal 15: passed on to 'sh'" run.err || fail "the signal's handling not reported"
as_before "SIGTERM"

rm -f running term.log
$F run "${D[@]}" data -- sleep 600 2> run.err &
pid=$!
for i in $(seq 1 300); do
	pgrep -P $pid -x sleep > /dev/null && break
	sleep 0.1
done
pgrep -P $pid -x sleep > /dev/null || { cat run.err; fail "sleep does not run under fleece run"; }
kill -TERM $pid
rc=0; wait $pid || rc=$?
assert_eq "$rc" 143 "exit status when SIGTERM killed CMD"
as_before "SIGTERM kills CMD"

# SIGTERMs every 20 ms (and a loop turn) from the first until fleece run has exited: some
# land while CMD runs its trap, some while the fleece is stopped.
rm -f running term.log
$F run "${D[@]}" data -- sh cmd4.sh 2> run.err &
pid=$!
wait_running $pid run.err
n=0
while alive $pid; do kill -TERM $pid 2> /dev/null || break; n=$((n + 1)); sleep 0.02; done	# it may exit between the two
rc=0; wait $pid || rc=$?
tail -n 3 run.err
step "$n SIGTERMs sent; exit $rc"
[ "$n" -ge 3 ] || fail "only $n signals sent"
assert_eq "$rc" 3 "exit status after a burst of SIGTERMs"
as_before "a burst of SIGTERMs"

rm -f running term.log
$F run --fleece-dir /mnt/fdir data -- sh cmd4.sh 2> run.err &
pid=$!
wait_running $pid run.err
cpid=$(pgrep -P $pid -x sh)
kill -KILL $pid
wait $pid || true
for i in $(seq 1 50); do alive "$cpid" || break; sleep 0.1; done
! alive "$cpid" || fail "CMD still runs after fleece run was killed"
assert_eq "$(cat term.log)" TERM "CMD's SIGTERM when fleece run died"
[ -e state/data ] || fail "no state left by a SIGKILL: nothing to test"
$F stop -q data
as_before "SIGKILL, then fleece stop"

step "5. the view invalidated while CMD runs: 125, though CMD exits 0"
fl_table=$(dmsetup table fl)
# CMD fails the fleece device, writes to data (its copy-before-write fails:
# the view is invalid), reads the view (errors), and exits 0 anyway.
cat > cmd5.sh <<EOF
dmsetup load fl --table "0 $(sectors "$fl") error"
dmsetup suspend fl
dmsetup resume fl
dd if=/dev/zero of=$data bs=64k count=1 seek=5 oflag=direct status=none
dd if="\$FLEECE_VIEW" of=/dev/null bs=1M iflag=direct status=none 2> dd.err && echo read-ok > dd.err
exit 0
EOF
expect_exit 125 $F run --fleece-dev "$fl" data -- sh cmd5.sh
echo "$T_ERR"
grep -q "Input/output error" dd.err || fail "CMD read the invalid view without an error: $(cat dd.err)"
[[ $T_ERR == *"data: the view became invalid while 'sh' ran"* ]] || fail "invalidation not reported: $T_ERR"
dmsetup load fl --table "$fl_table"
dmsetup suspend fl
dmsetup resume fl
put pat "$data"
as_before "view invalidated"

step "6. start fails: 125, CMD not run"
expect_exit 125 $F run "${D[@]}" nosuch -- touch ran
[[ $T_ERR == *"nosuch: no such device-mapper device"* ]] || fail "no such device: $T_ERR"
$F start -q --fleece-dir /mnt/fdir data
expect_exit 125 $F run --fleece-dev "$fl" data -- touch ran
echo "$T_ERR"
[[ $T_ERR == *"data: already fleeced"* ]] || fail "a fleeced device: $T_ERR"
$F stop -q data
expect_exit 125 $F run data -- touch ran
[[ $T_ERR == *"give the fleece space"* ]] || fail "no fleece space: $T_ERR"
[ ! -e ran ] || fail "CMD ran although the start failed"
as_before "failed starts"

step "7. bad usage"
expect_exit 125 $F run "${D[@]}" data touch ran
[[ $T_ERR == *"no '--' before the command"* ]] || fail "no --: $T_ERR"
expect_exit 125 $F run "${D[@]}" data --
[[ $T_ERR == *"no command after '--'"* ]] || fail "no command: $T_ERR"
expect_exit 125 $F run "${D[@]}" -- touch ran
[[ $T_ERR == *"no device given"* ]] || fail "no device: $T_ERR"
expect_exit 125 $F run --bogus "${D[@]}" data -- touch ran
[[ $T_ERR == *"unrecognized option '--bogus'"* ]] || fail "bad option: $T_ERR"
expect_exit 125 $F run --chunk-size 3K "${D[@]}" data -- touch ran
# Options of CMD after "--" are CMD's: --version is not fleece's.
$F run -q "${D[@]}" data -- sh -c 'echo "$1" > args.out' sh --version
assert_eq "$(cat args.out)" "--version" "CMD's own options"
$F run --help > help.out
grep -q "FLEECE_VIEW" help.out || fail "--help does not tell the environment"
[ ! -e ran ] || fail "CMD ran after a usage error"
as_before "usage"
umount /mnt/fdir
step "ok"
