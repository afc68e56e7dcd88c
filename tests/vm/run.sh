#!/bin/bash
# Boot a kernel in qemu (TCG), run the test suite inside it, report KTAP.
#
# usage: run.sh KVER KIMAGE KMODROOT MODULE OUTDIR SUITE [PATTERN]
#   SUITE is a folder under tests/ (cases, selftest, bench, demo).
#   TIER=long: the longer tier (tests run their long loops; default ci).
#   STRESS_SECONDS, STRESS_SEED: 34-stress's length and seed.
#   VM_MEM, VM_CPUS, VM_TIMEOUT, VM_KVM=1, VM_ICOUNT=N (instruction-counted
#   guest clock): the VM; VM_UDEV=0: no udevd in
#   the guest (DM_DISABLE_UDEV=1 instead); TEST_TIMEOUT: seconds a test
#   may take (default 900); VM_DISK=FILE adds a
#   virtio disk backed by FILE (VM_DISK_SIZE if it is created, default 5G).
#   VM_APPEND: more words for the guest's kernel command line; VM_PIDFILE:
#   qemu writes its process ID there (tests/vm/crash.sh kills it).
# Exit: 0 only when qemu exited with the guest's "passed" code (33: the
# guest wrote 0x10 to isa-debug-exit, a value qemu never returns by itself)
# and the console holds the guest's complete KTAP report: a plan 1..N with
# N >= 1, the N result lines numbered 1 to N, all "ok", and "# N passed,
# 0 failed" (with S tests skipped: "# N-S passed, 0 failed, S skipped",
# and N-S >= 1).  1 otherwise.
set -euo pipefail
kver=$1 kimage=$2 kmodroot=$3 module=$4 out=$5 suite=$6 pattern=${7:-}
src=$(cd "$(dirname "$0")/../.." && pwd)
: "${VM_MEM:=6G}" "${VM_CPUS:=2}"
# The whole run's limit is a backstop: each test has its own (TEST_TIMEOUT).
# A suite on a loaded 2-core CI machine takes up to about an hour.
: "${VM_TIMEOUT:=7200}"

# A selection that matches no test, or a word of T= that matches none (a
# renamed test, a typo), fails at once; the guest checks it again.
[ -d "$src/tests/$suite" ] || { echo "# no suite tests/$suite"; exit 1; }
# (FLEECE_SELFTEST_SKIP_HOST_SELECTION=1: only for make selftest, which
# proves that the guest's check fails such a run too.)
if [ -n "$pattern" ] && [ "$pattern" != all ] && [ -z "${FLEECE_SELFTEST_SKIP_HOST_SELECTION:-}" ]; then
	IFS=, read -ra words <<< "$pattern,"
	for w in "${words[@]}"; do
		found=
		for t in "$src/tests/$suite"/*.sh; do
			n=${t##*/}
			[ -n "$w" ] && [ -f "$t" ] && [[ ${n%.sh} == *"$w"* ]] && { found=1; break; }
		done
		[ -n "$found" ] || { echo "# T='$pattern': the word '$w' matches no test in tests/$suite"; echo "0 passed, 1 failed"; exit 1; }
	done
fi

rm -rf "$out" && mkdir -p "$out"
initrd="$out/initramfs.cpio.gz"

# --- initramfs: busybox + the modules needed to mount 9p and overlay ---
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,proc,sys,dev,modules}
cp /bin/busybox "$stage/bin/busybox"
for a in sh mount umount insmod sed cat mkdir switch_root poweroff sleep echo; do
	ln -s busybox "$stage/bin/$a"
done
cp "$src/tests/vm/initramfs-init" "$stage/init"
chmod +x "$stage/init"
: > "$stage/modules.order"
for m in virtio_pci 9pnet_virtio 9p overlay; do
	modprobe -d "$kmodroot" -S "$kver" --show-depends "$m" 2>/dev/null
done | awk '$1 == "insmod" {print $2}' | while read -r ko; do
	name=$(basename "$ko"); name=${name%.xz}; name=${name%.zst}
	grep -qx "$name" "$stage/modules.order" && continue
	case "$ko" in
	*.xz) xz -dc "$ko" > "$stage/modules/$name" ;;
	*.zst) zstd -qdc "$ko" > "$stage/modules/$name" ;;
	*) cp "$ko" "$stage/modules/$name" ;;
	esac
	echo "$name" >> "$stage/modules.order"
done
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd"

# --- boot ---
# fleece_test_guest=1: the token every test script and the guest's scripts
# check before doing anything; they refuse to run without it.
cmdline="fleece_test_guest=1 console=ttyS0 loglevel=4 panic=-1 oops=panic panic_on_warn=1 softlockup_panic=1"
cmdline+=" log_buf_len=16M hung_task_panic=1 sysctl.kernel.hung_task_timeout_secs=120 mitigations=off"
# no_timer_check: on a loaded host TCG can miss the 8254 timer check at
# boot, and the kernel panics ("IO-APIC + timer doesn't work!", seen
# 2026-11-30 and 2026-12-01 at load 6-7); virtual machines skip it.
cmdline+=" no_timer_check"
# Ram disks for a kernel with brd built in (the debug kernel).
cmdline+=" brd.rd_nr=4 brd.rd_size=1048576"
cmdline+=" fleece.src=$src fleece.kver=$kver fleece.modroot=$kmodroot fleece.module=$module"
cmdline+=" fleece.suite=$suite fleece.pattern=${pattern:-all} fleece.udev=${VM_UDEV:-1}"
cmdline+=" fleece.test_timeout=${TEST_TIMEOUT:-900} fleece.tier=${TIER:-ci}"
# STRESS_SECONDS / STRESS_SEED: 34-stress's length and seed.
[ -z "${STRESS_SECONDS:-}" ] || cmdline+=" fleece.stress_seconds=$STRESS_SECONDS"
[ -z "${STRESS_SEED:-}" ] || cmdline+=" fleece.stress_seed=$STRESS_SEED"
# A file-backed virtio disk, when asked (make bench DISK=FILE): created
# sparse if missing, opened with O_DIRECT on the host (cache=none) so that
# the host's page cache does not turn it into another ram disk.
disk=()
if [ -n "${VM_DISK:-}" ]; then
	[ -e "$VM_DISK" ] || truncate -s "${VM_DISK_SIZE:-5G}" "$VM_DISK"
	disk=(-drive "file=$VM_DISK,if=virtio,format=raw,cache=none,aio=threads")
	cmdline+=" fleece.disk=vda"
fi
[ -z "${VM_APPEND:-}" ] || cmdline+=" $VM_APPEND"
pidfile=()
[ -z "${VM_PIDFILE:-}" ] || pidfile=(-pidfile "$VM_PIDFILE")
accel=tcg
[ "${VM_KVM:-0}" = 1 ] && accel=kvm
# VM_ICOUNT=N: the guest's clock counts instructions (2^N ns each) instead
# of following the host's, so a benchmark's timings measure the work done
# per I/O, not how busy the host was.  One vCPU: under icount the vCPUs
# take turns on one host thread anyway, and 6.1 hangs bringing up a second.
icount=()
if [ -n "${VM_ICOUNT:-}" ]; then
	icount=(-icount "shift=$VM_ICOUNT,sleep=off")
	VM_CPUS=1
	cmdline+=" fleece.icount=$VM_ICOUNT"
fi

set +e
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -machine q35 -accel "$accel" "${icount[@]}" \
	-cpu max -smp "$VM_CPUS" -m "$VM_MEM" -nographic -no-reboot \
	-kernel "$kimage" -initrd "$initrd" -append "$cmdline" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-virtfs local,path="$out",mount_tag=out,security_model=none,multidevs=remap \
	-device isa-debug-exit,iobase=0xf4,iosize=0x04 \
	-device virtio-rng-pci "${disk[@]}" "${pidfile[@]}" \
	</dev/null > "$out/console.log" 2>&1 &
qpid=$!
# Follow the console: KTAP lines and diagnostics ("# ...") reach stdout live.
tail -n +1 -F --pid=$qpid "$out/console.log" 2>/dev/null |
	grep --line-buffered -aE '^(KTAP|1\.\.|ok |not ok |#)' &
tpid=$!
wait $qpid
rc=$?
sleep 0.5; kill $tpid 2>/dev/null; wait $tpid 2>/dev/null
set -e

# The guest writes 0x10 (all passed) or 0x11 (failures) to isa-debug-exit;
# qemu exits with (v << 1) | 1: 33 or 35.  qemu exits 1 when it cannot
# start (a missing kernel image, a bad option), 0 when the guest powers off
# or panics (-no-reboot); timeout gives 124 or 137.
verdict=1
case $rc in
33) verdict=0 ;;
35) echo "# guest reported failures" ;;
124|137) echo "# guest timed out after ${VM_TIMEOUT}s: console log follows"; tail -n 60 "$out/console.log" ;;
1) echo "# qemu failed to start or exited with an error (exit 1): console log follows"; tail -n 60 "$out/console.log" ;;
*) echo "# guest died (qemu exit $rc): a panic, crash or power-off without a verdict; console log follows"; tail -n 60 "$out/console.log" ;;
esac

# Believe "passed" only with the guest's complete report on the console: a
# plan 1..N with N >= 1, then exactly N result lines numbered 1..N, each
# "ok", and the guest's "# N passed, 0 failed" (or, when S of them are
# "ok ... # SKIP reason", "# N-S passed, 0 failed, S skipped").
report=$(tr -d '\r' < "$out/console.log" | awk '
	/^1\.\.[0-9]+$/ { plans++; n = substr($0, 4) + 0; next }
	/^(not )?ok [0-9]+ / { r = $0; sub(/^not /, "", r); split(r, f, " ")
		results++; if (f[2] + 0 != results) misnumbered++
		if ($0 ~ /^not /) notok++
		else if ($0 ~ /^ok [0-9]+ [^ ]+ # SKIP /) skips++
		next }
	/^# [0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$/ { summaries++; summary = $0 }
	END {
		if (plans != 1) { print "the console holds " plans + 0 " KTAP plans (1..N), not one"; exit }
		if (n < 1) { print "the plan is 1.." n ": no test ran"; exit }
		if (results != n) { print "the plan is 1.." n " but the console holds " results + 0 " result lines"; exit }
		if (misnumbered) { print "the result lines are not numbered 1.." n; exit }
		if (notok) { print notok " tests failed"; exit }
		if (skips >= n) { print "every test skipped: nothing was tested"; exit }
		want = "# " (n - skips) " passed, 0 failed" (skips ? ", " skips " skipped" : "")
		if (summaries != 1 || summary != want) {
			print "the guest did not report \"" want "\" (found " summaries + 0 ": \"" summary "\")"; exit }
	}')
if [ -n "$report" ]; then
	if [ $verdict = 0 ]; then
		echo "# qemu exited with the guest's \"passed\" code, but the guest's report is incomplete: $report"
		verdict=1
	else
		echo "# $report"
	fi
fi

# Belt and braces: scan the kernel log the guest saved at the end, in case
# a splat slipped between the guest's per-test scans.
if [ -f "$out/dmesg.txt" ] && grep -aqE -f "$src/tests/vm/splat-patterns" "$out/dmesg.txt"; then
	echo "# kernel splat in the guest's kernel log:"
	grep -aE -B2 -A20 -f "$src/tests/vm/splat-patterns" "$out/dmesg.txt" | head -n 80 | sed 's/^/#   /'
	verdict=1
fi
passed=$(grep -aE '^ok [0-9]' "$out/console.log" | grep -acv ' # SKIP ' || true)
skipped=$(grep -acE '^ok [0-9]+ [^ ]+ # SKIP ' "$out/console.log" || true)
failed=$(grep -acE '^not ok [0-9]' "$out/console.log" || true)
[ $verdict = 0 ] || [ "$failed" -gt 0 ] || failed=1
[ $verdict = 0 ] && rm -f "$initrd"
if [ "$skipped" = 0 ]; then
	echo "$passed passed, $failed failed"
else
	echo "$passed passed, $failed failed, $skipped skipped"
fi
exit $verdict
