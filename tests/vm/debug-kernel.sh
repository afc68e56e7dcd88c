#!/bin/bash
# Build (once) a debug kernel for the VM tests from Debian's linux-source-6.1:
# tinyconfig + tests/vm/debug.config (KASAN, lockdep, kmemleak, debug objects,
# dm/brd/loop/virtio/9p/overlay built in). The result is cached in
#   $FLEECE_CACHE/debug-kernel/<hash of debug.config + this script>/
# and a finished build is reused instantly. On success stdout carries exactly:
#   KVER=<release>  KIMAGE=<bzImage>  KDIR=<tree for M= builds>
#   KMODROOT=<dir holding lib/modules/$KVER, depmod'ed>
# Everything else goes to stderr or to <cache>/build.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

frag="$here/debug.config"
tarball=/usr/src/linux-source-6.1.tar.xz
hash=$(cat "$frag" "$here/debug-kernel.sh" | sha256sum | cut -c1-16)
base="$FLEECE_CACHE/debug-kernel"
dir="$base/$hash"
export ARCH=x86_64

emit() {
	local kver
	kver=$(cat "$dir/kver")
	echo "KVER=$kver"
	echo "KIMAGE=$dir/linux/arch/x86/boot/bzImage"
	echo "KDIR=$dir/linux"
	echo "KMODROOT=$dir/root"
}

# $dir only ever appears through the final rename, so it is complete.
if [ -f "$dir/kver" ]; then emit; exit 0; fi

# One builder at a time; whoever waited may find the work done.
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if [ -f "$dir/kver" ]; then emit; exit 0; fi

[ -f "$tarball" ] || { echo "debug-kernel: $tarball missing (apt-get install linux-source-6.1)" >&2; exit 1; }
tmp="$dir.tmp"          # left over only by an interrupted build: start afresh
rm -rf "$tmp"
mkdir -p "$tmp/linux"
log="$tmp/build.log"
start=$(date +%s)

# Run a step with its output in the log; on failure show the log's tail.
run() {
	echo "== $*" >>"$log"
	if ! "$@" >>"$log" 2>&1; then
		echo "debug-kernel: FAILED: $*  (log: $log)" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
}

echo "debug-kernel: building in $tmp (10-25 min; log: $log)" >&2
run tar -C "$tmp/linux" --strip-components=1 -xf "$tarball"
cd "$tmp/linux"
run make tinyconfig
run scripts/kconfig/merge_config.sh -m .config "$frag"
run make olddefconfig
cp "$frag" "$tmp/debug.config"

# Kconfig silently drops options whose dependencies are unmet: insist that
# every line of the fragment made it into .config as written.
bad=()
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qxF -- "$line" .config ||
			bad+=("want '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" .config || echo absent)'") ;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }; opt=${opt%% *}
		if grep -q "^$opt=" .config; then bad+=("want $opt unset, got '$(grep "^$opt=" .config)'"); fi ;;
	esac
done <"$frag"
if [ ${#bad[@]} -gt 0 ]; then
	echo "debug-kernel: .config does not match $frag:" >&2
	printf '  %s\n' "${bad[@]}" >&2
	exit 1
fi

run nice -n 10 make -j2 bzImage modules
run nice -n 10 make modules_install INSTALL_MOD_PATH="$tmp/root"
kver=$(make -s kernelrelease)
[ -d "$tmp/root/lib/modules/$kver" ] || { echo "debug-kernel: no lib/modules/$kver" >&2; exit 1; }
# modules_install links build -> this (temporary) absolute path; make it relative.
rm -f "$tmp/root/lib/modules/$kver/build" "$tmp/root/lib/modules/$kver/source"
ln -s ../../../../linux "$tmp/root/lib/modules/$kver/build"
echo "$kver" >"$tmp/kver"

# Publish atomically.
cd /
mv "$tmp" "$dir"
echo "debug-kernel: built $kver in $(( $(date +%s) - start ))s" >&2
emit
