#!/bin/bash
# Filesystems: ext4 and xfs on the origin, fleeced while mounted.
#
# For each filesystem: the origin stack is base (what is mounted) -> linear
# -> origin-real -> a loop device on a file (which supports discard, unlike
# brd, so that fstrim reaches the origin).  Files are written (the last ones
# without a sync) and a sha256 manifest is taken.  Fleecing starts on the
# live, mounted filesystem: suspend base (which freezes it), load a fleece
# table on origin-real into base, resume; then the view is created.  On the
# mounted origin, files are then created, overwritten in place, rewritten,
# appended to and deleted, a large file is written and deleted, and fstrim
# runs.
#
# Checked:
#   - the view, mounted read-only (ext4: ro,noload; xfs: ro,norecovery,
#     nouuid), has exactly the files of the manifest (none created later)
#     and every one matches its checksum;
#   - the view's filesystem is clean for a read-only fsck: e2fsck -fn of
#     the view; xfs_repair -n after log recovery on a throw-away snapshot
#     of the view (see fsck_view);
#   - fleece status: copies were made, no error, active; the view refused
#     no read; no message from fleece in the kernel log;
#   - after the origin is unmounted and base reloaded as linear, the origin
#     filesystem holds what was written after the point in time (its own
#     manifest) and is clean for fsck.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

here=$PWD
modprobe loop

# fs size_MiB chunk_sectors mkfs... -- view mount options -- fsck...
# fleece_counts with the filesystem frozen: ext4's lazy inode table init
# writes in the background, and every write may start a copy.
frozen_counts() { # mountpoint dm-name
	fsfreeze -f "$1"
	fleece_counts "$2"
	fsfreeze -u "$1"
}

run_fs() {
	local fs=$1 mib=$2 chunk=$3
	shift 3
	local mkfs=() vopts=() fsck=()
	while [ "$1" != -- ]; do mkfs+=("$1"); shift; done
	shift
	vopts=$1
	shift 2
	fsck=("$@")
	local o=/mnt/origin-$fs v=/mnt/view-$fs sectors=$((mib * 2048))

	log "$fs: origin-real on a loop device, base on it; fs, files, manifest"
	truncate -s ${mib}M origin-$fs.img
	local loop
	loop=$(losetup -f --show origin-$fs.img)
	dmsetup create origin-real-$fs --table "0 $sectors linear $loop 0"
	dmsetup create base-$fs --table "0 $sectors linear /dev/mapper/origin-real-$fs 0"
	local fl
	fl=$(mkdev fl-$fs $mib 1)
	"${mkfs[@]}" /dev/mapper/base-$fs >/dev/null
	mkdir -p $o $v
	mount /dev/mapper/base-$fs $o
	mkdir -p $o/big $o/small/deep
	local i
	for i in 1 2 3 4 5; do
		head -c $((i * 512 * 1024 + i * 1000)) /dev/urandom > $o/big/f$i
	done
	for ((i = 1; i <= 30; i++)); do	# builtins only: quick under TCG
		echo "small file $i of $fs" > $o/small/s$i
		printf "deep $i %06d\n" $(eval echo "{1..$((i * 40))}") > $o/small/deep/d$i
	done
	sync
	# Written just before the start, not synced: the freeze must flush them.
	head -c 300000 /dev/urandom > $o/big/unsynced
	echo "unsynced small file" > $o/small/unsynced
	(cd $o && find . -type f | sort | xargs sha256sum) > manifest-$fs
	(cd $o && find . -type f | sort) > files-$fs

	log "$fs: start fleece under the mounted filesystem"
	dmsetup suspend base-$fs
	dmsetup load base-$fs --table \
		"0 $sectors fleece /dev/mapper/origin-real-$fs $fl $chunk"
	dmsetup resume base-$fs
	local view
	view=$(view_create view-$fs /dev/mapper/origin-real-$fs "$fl")
	udevadm settle
	assert_eq "$(dmsetup table base-$fs | awk '{ print $3 }')" fleece "base's target"
	local total=$(((sectors + chunk - 1) / chunk))
	# The thaw may already write (ext4 writes its superblock): copies.
	read -r pending copied released cbw errors state <<< "$(frozen_counts $o base-$fs)"
	assert_eq "$((pending + copied)) $copied $released $errors $state" \
		"$total $cbw 0 0 active" "status at the start"
	dmesg_mark

	log "$fs: create, overwrite, rewrite, append, delete; fstrim"
	head -c 2000000 /dev/urandom > $o/big/new1
	for ((i = 1; i <= 20; i++)); do echo "new $i" > $o/small/new$i; done
	dd if=/dev/urandom of=$o/big/f2 bs=64k count=4 seek=3 conv=notrunc status=none
	head -c 1000000 /dev/urandom > $o/big/f3	# truncated and rewritten
	head -c 100000 /dev/urandom >> $o/big/f4
	echo "changed" > $o/small/s7
	rm $o/big/f5 $o/big/unsynced $o/small/deep/d3 $o/small/s9
	rm -r $o/small/deep
	head -c $((8 << 20)) /dev/urandom > $o/big/filler
	sync
	rm $o/big/filler
	sync
	fstrim -v $o
	(cd $o && find . -type f | sort | xargs sha256sum) > manifest-after-$fs

	local st
	st=$(frozen_counts $o base-$fs)
	read -r pending copied released cbw errors state <<< "$st"
	log "$fs: $cbw copies of $total chunks"
	[ "$cbw" -gt 0 ] && [ "$copied" = "$cbw" ] || fail "$fs: expected copies, status: $st"
	assert_eq "$released $errors $state" "0 0 active" "$fs: released, errors, state"

	log "$fs: mount the view read-only, check the manifest"
	mount -o "$vopts" "$view" $v
	(cd $v && find . -type f | sort) > files-view-$fs
	diff -u files-$fs files-view-$fs || fail "$fs: the view's files differ from the point in time"
	(cd $v && sha256sum --quiet -c "$here/manifest-$fs") || fail "$fs: manifest check on the view"
	umount $v
	log "$fs: read-only fsck of the view"
	fsck_view $fs "$view" "${fsck[@]}"
	read -r _ _ _ _ _ refused _ vstate <<< "$(dmsetup status view-$fs)"
	assert_eq "$refused $vstate" "0 active" "$fs: view reads refused, state"
	if dmesg_since_mark | grep -E 'device-mapper: fleece|I/O error'; then
		fail "$fs: unexpected kernel messages"
	fi

	log "$fs: stop: umount, remove the view, base back to linear"
	umount $o
	dmsetup remove view-$fs
	dmsetup load base-$fs --table "0 $sectors linear /dev/mapper/origin-real-$fs 0"
	dmsetup resume base-$fs
	log "$fs: the origin holds what was written after the point in time"
	"${fsck[@]}" /dev/mapper/base-$fs || fail "$fs: fsck of the origin: exit $?"
	mount /dev/mapper/base-$fs $o
	(cd $o && sha256sum --quiet -c "$here/manifest-after-$fs") || fail "$fs: origin manifest"
	[ ! -e $o/big/f5 ] && [ ! -e $o/small/deep ] || fail "$fs: deleted files are back on the origin"
	umount $o
}

# A frozen ext4 has a clean journal: e2fsck -fn checks the view as it is.
# A frozen xfs keeps changes in its log and lazy superblock counters that
# only log recovery settles: xfs_repair -n of any frozen xfs image, fleece
# or not (a dd copy taken while frozen does the same), reports them and
# exits 1.  So xfs is checked through a throw-away dm-snapshot of the view:
# mount it (log recovery writes to the snapshot's exception store, never to
# the view), unmount, then xfs_repair -n must find nothing.
fsck_view() { # fs view fsck...
	local fs=$1 view=$2
	shift 2
	if [ $fs = xfs ]; then
		local cow
		cow=$(mkdev cow-$fs 64 2)
		dmsetup create overlay-$fs --table "0 $(sectors "$view") snapshot $view $cow N 8"
		mount -o nouuid /dev/mapper/overlay-$fs /mnt/view-$fs
		umount /mnt/view-$fs
		view=/dev/mapper/overlay-$fs
	fi
	"$@" "$view" || fail "$fs: $* of the view: exit $?"
	if [ $fs = xfs ]; then
		dmsetup remove overlay-$fs
	fi
}

run_fs ext4 128 8 mkfs.ext4 -q -F -- ro,noload -- e2fsck -fn
run_fs xfs 320 128 mkfs.xfs -q -f -- ro,norecovery,nouuid -- xfs_repair -n
