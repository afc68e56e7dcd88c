#!/bin/bash
# Runs inside the VM as PID 1 (after switch_root): prepares the system, loads
# dm-fleece, runs every test of the chosen suite, prints KTAP, and tells the
# host the verdict through isa-debug-exit (port 0xf4).
# Only ever in the test VM: outside it, this mounts over the host's /proc,
# /sys, /dev and /run.  run.sh puts fleece_test_guest=1 on the guest's
# kernel command line.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
arg() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline 2>/dev/null; }

# /proc: moved here by the initramfs' /init, for the check above
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
# /tmp stays the overlay's: the host's /tmp (a BUILD dir, say) shows through.
mount -t tmpfs tmpfs /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

SRC=$(arg fleece.src) KVER=$(arg fleece.kver) MODROOT=$(arg fleece.modroot)
MODULE=$(arg fleece.module) SUITE=$(arg fleece.suite) PATTERN=$(arg fleece.pattern)
OUT=/fleece-out
export SRC KVER OUT

# The verdict, through isa-debug-exit: qemu then exits with (byte << 1) | 1.
# "Passed" is a value qemu never returns by itself (it exits 1 when it
# cannot start, 0 on a power-off or a panic with -no-reboot), and run.sh
# also requires the complete KTAP report on the console before it believes
# it.
VM_EXIT_PASS=0x10	# qemu exit 33
VM_EXIT_FAIL=0x11	# qemu exit 35
export VM_EXIT_PASS VM_EXIT_FAIL
exit_vm() { # byte
	printf "\\x$(printf %02x "$1")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc status=none
	echo o > /proc/sysrq-trigger
	sleep 10
}

mkdir -p "/lib/modules/$KVER"
mount --bind "$MODROOT/lib/modules/$KVER" "/lib/modules/$KVER"
hostname fleece-vm
ulimit -c 0

# udev: libdevmapper and lvm2 wait for it to create /dev/mapper nodes.
# Without it (fleece.udev=0: the debug kernel, too slow under TCG for
# udevd to answer in time) they create the nodes themselves.
mkdir -p /run/udev /run/lvm /run/lock
if [ "$(arg fleece.udev)" = 0 ]; then
	export DM_DISABLE_UDEV=1
	echo "# no udevd: DM_DISABLE_UDEV=1"
else
	udevd=$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd)
	# Not --daemon: its start-up handshake gives up after a few seconds;
	# poll instead.
	"$udevd" --resolve-names=never >/dev/null 2>&1 &
	for i in $(seq 1 300); do
		udevadm control --ping >/dev/null 2>&1 && break
		sleep 0.2
	done
	udevadm control --ping >/dev/null 2>&1 || echo "# udevd does not answer"
	udevadm trigger --action=add >/dev/null 2>&1
	udevadm settle --timeout=120
fi
# lvm in a throw-away guest: no lvmetad/lvmpolld, no devices file.
export LVM_SUPPRESS_FD_WARNINGS=1

echo 4 > /proc/sys/kernel/printk
modprobe dm-mod 2>/dev/null
modprobe dm-snapshot 2>/dev/null
modprobe dm-thin-pool 2>/dev/null
modprobe libcrc32c 2>/dev/null	# fleece-track's checksums (dm-thin-pool pulls it in too)
if ! insmod "$MODULE"; then
	echo "not ok 1 load-module # insmod $MODULE failed"
	dmesg > "$OUT/dmesg.txt"
	exit_vm $VM_EXIT_FAIL
fi

. "$SRC/tests/vm/guest-runner.sh"
run_suite "$SRC/tests/$SUITE" "$PATTERN"
verdict=$?	# 0: every selected test passed, and at least one was selected

# Unloading frees everything the module still holds; kmemleak then tells
# whether anything leaked over the whole run.
if ! rmmod dm_fleece; then
	echo "# rmmod dm_fleece failed at the end of the run"
	verdict=1
fi
if [ -w /sys/kernel/debug/kmemleak ]; then
	echo scan > /sys/kernel/debug/kmemleak; sleep 6
	echo scan > /sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak > "$OUT/kmemleak.txt"
	if [ -s "$OUT/kmemleak.txt" ]; then
		echo "# kmemleak reports leaks:"; head -n 60 "$OUT/kmemleak.txt" | sed 's/^/#   /'
		verdict=1
	fi
fi
dmesg > "$OUT/dmesg.txt"
if grep -aqE -f "$SRC/tests/vm/splat-patterns" "$OUT/dmesg.txt"; then
	verdict=1
fi
sync
if [ "$verdict" = 0 ]; then exit_vm $VM_EXIT_PASS; else exit_vm $VM_EXIT_FAIL; fi
