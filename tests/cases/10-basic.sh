#!/bin/bash
# Basic: a known pattern, fleece + view, overwrite the origin; the view holds
# the old pattern, the origin the new one.  Reads of the view over runs of
# pending chunks, then of copied ones, each go down as one bio.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

origin=$(mkdev origin 64)
fl=$(mkdev fl 64 1)
mkpattern old 64 old
mkpattern new 64 new
put old "$origin"

fleece_create fo "$origin" "$fl" 128 >/dev/null
view=$(view_create fv "$origin" "$fl")
udevadm settle
origin_reads=$(status_field fv 0)	# udev's probe of the new view
assert_eq "$(fleece_counts fo)" "1024 0 0 0 0 active" "status after start"

# A read over a run of pending chunks, or of copied ones, goes down whole:
# each 1 MiB read of `same` (16 chunks) is one read of the origin, then of
# the fleece device.
same "$view" old "view before any write"
assert_eq "$(dmsetup status fv | cut -d' ' -f4-)" "$((origin_reads + 64)) 0 0 0 active" \
	"view status after reading pending chunks"

put new /dev/mapper/fo
same /dev/mapper/fo new "origin after overwrite"
same "$view" old "view after overwrite"
assert_eq "$(fleece_counts fo)" "0 1024 0 1024 0 active" "status after overwrite"
assert_eq "$(dmsetup status fv | cut -d' ' -f4-)" "$((origin_reads + 64)) 64 0 0 active" \
	"view status after reading copied chunks"
assert_eq "$(dmsetup table fo)" "0 131072 fleece $(devno origin) $(devno fl) 128" "table"

dmsetup remove fv
dmsetup remove fo
same "$origin" new "origin device after removal"
