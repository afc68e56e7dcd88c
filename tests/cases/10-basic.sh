#!/bin/bash
# Basic: a known pattern, fleece + view, overwrite the origin; the view holds
# the old pattern, the origin the new one.
. "$SRC/tests/lib.sh"

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

put new /dev/mapper/fo
same /dev/mapper/fo new "origin after overwrite"
same "$view" old "view after overwrite"
assert_eq "$(fleece_counts fo)" "0 1024 0 1024 0 active" "status after overwrite"
assert_eq "$(dmsetup status fv | cut -d' ' -f4-)" "$origin_reads 1024 0 0 active" "view status"
assert_eq "$(dmsetup table fo)" "0 131072 fleece $(dmsetup info -c --noheadings -o major,minor --separator : origin) $(dmsetup info -c --noheadings -o major,minor --separator : fl) 128" "table"

dmsetup remove fv
dmsetup remove fo
same "$origin" new "origin device after removal"
