#!/bin/bash
# make selftest: proves that the harness fails the runs it must fail, and
# passes one that passed.  Each case names what it proves; any case that
# does not behave fails the self-test.
#
# usage: selftest.sh KVER KIMAGE KMODROOT MODULE OUTDIR
#
# Host only (no VM):
#   guard      every test script, tests/lib.sh and the guest's scripts have
#              the in-VM guard as their first command, and a few of them,
#              run on this host (as nobody, empty PATH and environment, in an
#              empty directory), refuse to run and change nothing;
#   selection  a T= word that matches no test fails before booting;
#   qemu-start a qemu that cannot start (no such kernel image) fails the run.
# In VMs (tests/selftest/*.sh, small ones: 1 GiB, no udevd):
#   control    a passing test and a test that skips (with a reason) pass
#              the run (exit 0);
#   verdicts   a passing test, a kernel splat, a test exiting 1, a test
#              that hangs past TEST_TIMEOUT, a skip and an exit 77 without
#              a reason: the run fails, with the right verdict and blame
#              for each;
#   no-report  a guest that writes the "passed" code to isa-debug-exit before
#              reporting anything: qemu exits "passed", the run must fail;
#   all-skipped  a run whose only test skips fails: nothing was tested;
#   guest-selection  the same empty selection, past the host's check: the
#              guest itself fails the run.
set -uo pipefail
kver=$1 kimage=$2 kmodroot=$3 module=$4 out=$5
src=$(cd "$(dirname "$0")/../.." && pwd)
run="$src/tests/vm/run.sh"
export VM_MEM=${VM_MEM:-1G} VM_UDEV=${VM_UDEV:-0}
rm -rf "$out" && mkdir -p "$out"
bad=0

ok() { echo "selftest: ok:   $*"; }
no() { echo "selftest: FAIL: $*"; bad=1; }
# run NAME [env...] -- run.sh args: run.sh's output in $out/NAME.log, its
# status in $rc
vm() {
	local name=$1 t0=$SECONDS
	shift
	env "$@" > "$out/$name.log" 2>&1
	rc=$?
	echo "selftest: $name: run.sh exit $rc after $((SECONDS - t0))s (log: $out/$name.log)"
}
has() { grep -qF -- "$2" "$out/$1.log"; }

# --- guard -----------------------------------------------------------------
guard=$(sed -n '/^\[\[ " \$(<\/proc\/cmdline) "/p' "$src/tests/lib.sh")
[ "$(printf '%s\n' "$guard" | wc -l)" = 1 ] && [[ $guard == *fleece_test_guest=1* ]] ||
	{ no "guard: no single guard line in tests/lib.sh"; exit 1; }
# The first command of a script: its first line that is not the #! line, a
# comment or blank.
first_command() { awk 'NR == 1 && /^#!/ { next } /^[ \t]*(#|$)/ { next } { print; exit }' "$1"; }
# Test scripts of other branches that do not have the guard yet: reported,
# and to be emptied when they get it (a listed script that has it fails).
pending=$(sed 's/#.*//' "$src/tests/selftest/guard-pending" 2>/dev/null | xargs)
guarded=() missing=()
for f in "$src"/tests/{cases,selftest,demo,bench}/*.sh "$src/tests/lib.sh" \
	 "$src/tests/vm/guest.sh" "$src/tests/vm/guest-runner.sh" \
	 "$src"/tests/crash/*.sh "$src/tests/crash/common.inc"; do
	rel=${f#"$src"/}
	want=$guard	# the crash tests' own says which make target runs them
	[[ $rel != tests/crash/* ]] || want=${guard/use make check/use make check-crash}
	if [ "$(first_command "$f")" = "$want" ]; then
		guarded+=("$rel")
		[[ " $pending " != *" $rel "* ]] || no "guard: $rel has the guard: remove it from tests/selftest/guard-pending"
	elif [[ " $pending " == *" $rel "* ]]; then
		missing+=("$rel")
	else
		no "guard: the first command of $rel is not the guard line of tests/lib.sh"
	fi
done
echo "selftest: guard: ${#guarded[@]} scripts start with the guard"
[ ${#missing[@]} = 0 ] || echo "selftest: guard: NOT YET GUARDED (tests/selftest/guard-pending): ${missing[*]}"
# initramfs-init is busybox sh: its own guard (PID 1, then the token),
# right after setting PATH.
[ "$(awk '!/^#/ && NF' "$src/tests/vm/initramfs-init" | sed -n 1p)" = "export PATH=/bin:/sbin" ] &&
	[[ $(awk '!/^#/ && NF' "$src/tests/vm/initramfs-init" | sed -n 2p) == '[ $$ = 1 ] ||'* ]] &&
	guarded+=(tests/vm/initramfs-init) ||
	no "guard: the first command of tests/vm/initramfs-init is not its PID-1 check"

# Run some of them here.  Harmless by construction: the checks above proved
# that the guard (which only reads /proc/cmdline) is the first command of
# each; on top of that they run as nobody, with an empty environment, no
# PATH, SRC pointing to an empty directory, in an empty directory.
if ! grep -q 'fleece_test_guest=1' /proc/cmdline; then
	sandbox=$(mktemp -d)
	chmod 755 "$sandbox"
	as_nobody=()
	[ "$(id -u)" = 0 ] && as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
	for rel in tests/cases/20-io-kinds.sh tests/cases/22-lifecycle.sh tests/demo/demo.sh \
		   tests/lib.sh tests/vm/guest-runner.sh tests/vm/guest.sh tests/vm/initramfs-init; do
		[[ " ${guarded[*]} " == *" $rel "* ]] || continue
		sh=/bin/bash
		[ "$rel" = tests/vm/initramfs-init ] && sh=/bin/sh
		# A sourced file refuses through the script that sources it.
		case $rel in
		tests/lib.sh|tests/vm/guest-runner.sh) cmd=("$sh" -c '. "$1"; echo "sourced it and went on"' host-check "$src/$rel") ;;
		*) cmd=("$sh" "$src/$rel") ;;
		esac
		msg=$(cd "$sandbox" && timeout 10 "${as_nobody[@]}" env -i PATH=/nonexistent SRC="$sandbox" "${cmd[@]}" 2>&1)
		rc=$?
		if [ $rc = 1 ] && [[ $msg == *"refusing to run"* ]] && [ -z "$(ls -A "$sandbox")" ]; then
			ok "guard: $rel run on this host refuses: $msg"
		else
			no "guard: $rel run on this host: exit $rc, '$msg', left: $(ls -A "$sandbox")"
		fi
	done
	rm -rf "$sandbox"
else
	no "guard: this host's kernel command line has fleece_test_guest=1"
fi

# --- no VM: selection, qemu start failure ------------------------------------
vm selection "$run" "$kver" "$kimage" "$kmodroot" "$module" "$out/selection" selftest 10-passes,no-such-test
if [ $rc != 0 ] && has selection "matches no test" && [ ! -e "$out/selection/console.log" ]; then
	ok "selection: a T= word matching no test fails the run before booting"
else
	no "selection: a T= word matching no test: exit $rc"; cat "$out/selection.log"
fi

vm qemu-start "$run" "$kver" /nonexistent/vmlinuz "$kmodroot" "$module" "$out/qemu-start" selftest 10-passes
if [ $rc != 0 ] && has qemu-start "qemu failed to start"; then
	ok "qemu-start: a qemu that cannot start fails the run"
else
	no "qemu-start: a qemu that cannot start: exit $rc"; tail -n 20 "$out/qemu-start.log"
fi

# --- VMs ---------------------------------------------------------------------
vm control "$run" "$kver" "$kimage" "$kmodroot" "$module" "$out/control" selftest 10-passes,60-skips
if [ $rc = 0 ] && has control "ok 1 10-passes" && has control "ok 2 60-skips # SKIP selftest: nothing to run here" &&
   has control "# 1 passed, 0 failed, 1 skipped"; then
	ok "control: a run whose tests pass or skip with a reason passes"
else
	no "control: a run whose one test passes: exit $rc"; tail -n 40 "$out/control.log"
fi

vm verdicts TEST_TIMEOUT=20 "$run" "$kver" "$kimage" "$kmodroot" "$module" "$out/verdicts" selftest \
	10-passes,20-splat,30-exits-1,40-hangs,60-skips,70-exits-77
v=verdicts
if [ $rc != 0 ] && has $v "ok 1 10-passes" && has $v "not ok 2 20-splat" &&
   has $v "# kernel splat during 20-splat" && has $v "not ok 3 30-exits-1 # exit 1 " &&
   has $v "not ok 4 40-hangs # exit 124 " && has $v "# timed out after 20s" &&
   has $v "ok 5 60-skips # SKIP selftest: nothing to run here" &&
   has $v "not ok 6 70-exits-77 # exit 77 " && has $v "# 1 passed, 4 failed, 1 skipped"; then
	ok "verdicts: a splat, an exit 1, a hang and an exit 77 without a reason each fail their test and the run; the passing test passes, the skip skips"
else
	no "verdicts: exit $rc, or a test's verdict or blame is wrong"; tail -n 60 "$out/$v.log"
fi

vm no-report "$run" "$kver" "$kimage" "$kmodroot" "$module" "$out/no-report" selftest 50-no-report
if [ $rc != 0 ] && has no-report "report is incomplete"; then
	ok "no-report: a guest that exits with the \"passed\" code without its report fails the run"
else
	no "no-report: exit $rc"; tail -n 40 "$out/no-report.log"
fi

vm all-skipped "$run" "$kver" "$kimage" "$kmodroot" "$module" "$out/all-skipped" selftest 60-skips
if [ $rc != 0 ] && has all-skipped "ok 1 60-skips # SKIP" && has all-skipped "every test skipped"; then
	ok "all-skipped: a run in which every test skipped fails"
else
	no "all-skipped: exit $rc"; tail -n 40 "$out/all-skipped.log"
fi

vm guest-selection FLEECE_SELFTEST_SKIP_HOST_SELECTION=1 "$run" "$kver" "$kimage" "$kmodroot" "$module" \
	"$out/guest-selection" selftest no-such-test
if [ $rc != 0 ] && has guest-selection "# no test in" && has guest-selection "no test ran"; then
	ok "guest-selection: the guest fails a selection of no test"
else
	no "guest-selection: exit $rc"; tail -n 40 "$out/guest-selection.log"
fi

if [ $bad = 0 ]; then
	echo "harness selftest: every failure failed the run, and the passing run passed"
else
	echo "harness selftest: FAILED (see above)"
fi
exit $bad
