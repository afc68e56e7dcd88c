#!/bin/bash
# make check-crash, boot 1 (tests/vm/crash.sh): the persistent disk set up
# (LVM: data 64 MiB, the tracker's store behind a dm-delay device, xfs
# for images, records and the fleece file), tracking started, the device
# filled, a full backup checked byte for byte, more writes, then an
# orderly shutdown: the next boot re-attaches and goes on (20-reboot).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check-crash" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/crash/common.inc" || exit 1

step "the disk $DISK: must be blank (crash.sh creates it); LVM on it"
[ -z "$(head -c 1M "$DISK" | tr -d '\0')" ] || fail "$DISK is not blank: not touching it"
pvcreate -q "$DISK" > /dev/null
vgcreate -q "$VG" "$DISK" > /dev/null
lvcreate -q -W y -L ${DATA_MIB}M -n data "$VG" > /dev/null
lvcreate -q -W y -L 4M -n store "$VG" > /dev/null
lvcreate -q -W y -l 100%FREE -n imgs "$VG" > /dev/null
mkfs.xfs -q -f -m reflink=1 "/dev/$VG/imgs"
mkdir -p "$IMGS"
mount "/dev/$VG/imgs" "$IMGS"
mkdir -m 0700 "$IMGS/track" "$IMGS/state"
mkdir "$IMGS/fdir"
umount "$IMGS"
vgchange -an "$VG" > /dev/null

step "boot as every boot: activate, the store's delay device"
activate
step "track start (a new history), chunk $CH"
"$F" track start "$NAME" --store "/dev/mapper/$CSTORE" --chunk-size 64K
"$F" track status "$NAME"
[ -s "$FLEECE_TRACK_DIR/$DMNAME.conf" ] || ls -l "$FLEECE_TRACK_DIR"
[ -n "$(ls -A "$FLEECE_TRACK_DIR")" ] || fail "no tracking record in $FLEECE_TRACK_DIR"

step "fill the device (fio, 1 MiB sequential)"
fio --name=fill --filename="$DATA" --rw=write --bs=1M --direct=1 --ioengine=libaio \
	--iodepth=4 > fio-fill.log 2>&1 || { cat fio-fill.log; fail "fio fill"; }

step "backup 1: --incremental with no image: a full one, exact"
verified_backup setup-full
grep_q -- "--incremental: a full backup: no previous image" backup.err || fail "backup 1: not a full backup for want of an image"

step "more writes after the backup (random 4 KiB in 8 MiB, 3 s), then an orderly shutdown"
fio --name=more --filename="$DATA" --size=8M --rw=randwrite --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --time_based --runtime=3 --randrepeat=0 > fio-more.log 2>&1 ||
	{ cat fio-more.log; fail "fio"; }
"$F" track status "$NAME"
shutdown_clean
say "setup done"
log "done"
