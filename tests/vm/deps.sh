#!/bin/bash
# Install everything the build, the VM test suite and the linters need on a
# fresh Debian 12 (x86_64). Idempotent and quick when all is present.
# Kernel images are downloaded and unpacked into $FLEECE_CACHE, not installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

pkgs=(qemu-system-x86 busybox-static cpio dmsetup lvm2 thin-provisioning-tools
      fio e2fsprogs xfsprogs libdevmapper-dev sparse udev kmod make gcc
      util-linux python3 zstd libblkid-dev strace "linux-headers-$KVER_6_1" "linux-headers-$KVER_6_12"
      linux-source-6.1 bc flex bison libelf-dev libssl-dev dwarves rsync
      python3-matplotlib procps debhelper dh-dkms dkms lintian dpkg-dev fakeroot
      restic borgbackup
      qemu-utils libnbd-bin
      valgrind
      btrfs-progs cryptsetup-bin)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || true
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian kernel images, unpacked (not installed: the host kernel is not ours).
for kver in "$KVER_6_1" "$KVER_6_12"; do
	dir="$FLEECE_CACHE/kernel/$kver"
	[ -f "$dir/.done" ] && continue
	echo "deps: fetching linux-image-$kver"
	rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
	(cd "$dir.tmp" && apt-get download -qq "linux-image-$kver" "linux-image-$kver-unsigned" 2>/dev/null ||
	 cd "$dir.tmp" && apt-get download -qq "linux-image-$kver")
	deb=$(ls "$dir.tmp"/linux-image-*.deb | head -1)
	dpkg -x "$deb" "$dir.tmp/root"
	rm -f "$dir.tmp"/*.deb
	depmod -b "$dir.tmp/root" "$kver"
	rm -rf "$dir" && mv "$dir.tmp" "$dir" && touch "$dir/.done"
done

# The kernel source tarball carries checkpatch.pl; unpack just the scripts.
src="$FLEECE_CACHE/linux-source-6.1"
if [ ! -x "$src/scripts/checkpatch.pl" ]; then
	tarball=$(ls /usr/src/linux-source-6.1.tar.* | head -1)
	mkdir -p "$src"
	tar -C "$src" --strip-components=1 -xf "$tarball" \
		--wildcards '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' '*/scripts/const_structs.checkpatch'
fi
exit 0
