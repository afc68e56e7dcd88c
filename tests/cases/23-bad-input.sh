#!/bin/bash
# Bad input: malformed or inconsistent table lines for fleece and
# fleece-view.  Each must be refused by dmsetup (exit status non-zero) with
# its specific "<target>: <message> (<errno>)" line in the kernel log, and
# leave nothing behind: no new dm device, no new holder of any device.
# Covered: argument counts; chunk size not a number, with trailing garbage,
# negative, overflowing 32 bits, not a power of two, too small, too large;
# unknown, miscounted and incomplete feature arguments; origin offsets not
# a number, overflowing, beyond the origin, not leaving room for the region,
# not a multiple of the origin's logical block size; devices too small,
# equal, missing; views with no live fleece, with swapped or wrong devices,
# longer than the region, of a fleece that was loaded but never resumed, of
# an invalid fleece; a second fleece sharing a device of a live pair;
# reloads of a live fleece with another chunk size, length or origin offset (refused,
# the old table keeps working); an origin too large for memory at its chunk
# size.  Then valid tables (with feature arguments) are accepted and work.
# Every case runs; the failures are listed at the end.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1

o=$(mkdev o 8)
f=$(mkdev f 8 1)
small=$(mkdev small 4 1)
o2=$(mkdev o2 8 2)
f2=$(mkdev f2 8 3)
N=16384			# 8 MiB
mkpattern old 8 old
mkpattern new 8 new
put old "$o"

held=()
for d in "$o" "$f" "$small" "$o2" "$f2"; do held+=("/sys/block/$(sysfs_name "$d")/holders"); done
# Holders of the five devices, and the dm devices that exist (no process
# started: the VM starts processes slowly).
holders() {
	local h x n=""
	for h in "${held[@]}"; do
		x=("$h"/*)
		[ -e "${x[0]}" ] || x=()
		n+="${#x[@]} "
	done
	echo "$n"
}
dm_devices() { local f name n=""; for f in /sys/block/dm-*/dm/name; do read -r name < "$f"; n+="$name "; done; echo "$n"; }

problems=()
n=0
problem() { problems+=("case $n ($1): $2"); echo "   PROBLEM: $2"; }

# dm core prints a constructor's error with %pe: "(-EINVAL)" on a kernel
# with CONFIG_SYMBOLIC_ERRNAME (Debian's), "(-22)" without it (the debug
# kernel).  The number of each name used here:
declare -A errno_num=([-EAGAIN]=-11 [-EBUSY]=-16 [-EINVAL]=-22 [-EIO]=-5
	[-ENODEV]=-19 [-ENOENT]=-2 [-ENOMEM]=-12)

# Run a command that must fail with a kernel message; nothing may remain.
# The errno and the message may list alternatives separated by "|".
refused() { # what target errno message command...
	local what=$1 type=$2 errnos=$3 msgs=$4 msg errno line h0 d0 new alt errs found=""
	shift 4
	n=$((n + 1))
	echo "-- case $n: $what"
	h0=$(holders)
	d0=$(dm_devices)
	echo "fleece-test: bad input case $n" > /dev/kmsg
	if "$@" >/dev/null 2>&1; then
		problem "$what" "accepted: $*"
		dmsetup remove bad >/dev/null 2>&1 || true
		return 0
	fi
	new=$(dmesg | sed -n "/fleece-test: bad input case $n\$/,\$p")
	IFS='|' read -ra alt <<< "$msgs"
	IFS='|' read -ra errs <<< "$errnos"
	while read -r line; do
		for msg in "${alt[@]}"; do
			for errno in "${errs[@]}"; do
				[ -n "${errno_num[$errno]}" ] || fail "23-bad-input: no number for $errno in errno_num"
				[[ $line == *" $type: $msg"*"($errno)" ||
				   $line == *" $type: $msg"*"(${errno_num[$errno]})" ]] && found=y
			done
		done
	done <<< "$new"
	[ -n "$found" ] || problem "$what" "no kernel message '$type: $msgs ... ($errnos)'; got: ${new#*$'\n'}"
	[ "$(dm_devices)" = "$d0" ] || problem "$what" "dm devices before: $d0, after: $(dm_devices)"
	[ "$(holders)" = "$h0" ] || problem "$what" "holders before: $h0, after: $(holders)"
	if dmsetup info bad >/dev/null 2>&1; then
		problem "$what" "device 'bad' left behind"
		dmsetup remove bad >/dev/null 2>&1 || true
	fi
	return 0
}
reject() { # what target errno message table: dmsetup create must refuse it
	refused "$1" "$2" "$3" "$4" dmsetup create bad --table "$5"
}

FL="0 $N fleece"
log "fleece: argument counts"
reject "no arguments" fleece -EINVAL "Not enough arguments" "$FL"
reject "one argument" fleece -EINVAL "Not enough arguments" "$FL $o"
reject "two arguments" fleece -EINVAL "Not enough arguments" "$FL $o $f"
reject "an argument after zero features" fleece -EINVAL "Too many arguments" "$FL $o $f 8 0 extra"
reject "an argument after the features" fleece -EINVAL "Too many arguments" "$FL $o $f 8 1 fail_origin_writes extra"

log "fleece: chunk size"
C="Invalid chunk size"
reject "chunk size 'abc'" fleece -EINVAL "$C: not a number of sectors" "$FL $o $f abc"
reject "chunk size '8x'" fleece -EINVAL "$C: not a number of sectors" "$FL $o $f 8x"
reject "chunk size '0x10'" fleece -EINVAL "$C: not a number of sectors" "$FL $o $f 0x10"
reject "chunk size -8" fleece -EINVAL "$C: not a number of sectors" "$FL $o $f -8"
reject "chunk size 2^32+8 (8 when cut to 32 bits)" fleece -EINVAL \
	"$C: not a number of sectors|$C: larger than 32768 sectors" "$FL $o $f 4294967304"
reject "chunk size 0" fleece -EINVAL "$C: not a power of two" "$FL $o $f 0"
reject "chunk size 12" fleece -EINVAL "$C: not a power of two" "$FL $o $f 12"
reject "chunk size 24" fleece -EINVAL "$C: not a power of two" "$FL $o $f 24"
reject "chunk size 4" fleece -EINVAL "$C: smaller than 8 sectors" "$FL $o $f 4"
reject "chunk size 1" fleece -EINVAL "$C: smaller than 8 sectors" "$FL $o $f 1"
reject "chunk size 65536" fleece -EINVAL "$C: larger than 32768 sectors" "$FL $o $f 65536"
reject "chunk size 2^31" fleece -EINVAL "$C: larger than 32768 sectors" "$FL $o $f 2147483648"

log "fleece: feature arguments"
F="Invalid number of feature arguments"
reject "unknown feature" fleece -EINVAL "Unknown feature argument" "$FL $o $f 8 1 bogus"
reject "unknown feature after a valid one" fleece -EINVAL "Unknown feature argument" \
	"$FL $o $f 8 2 fail_origin_writes bogus"
reject "feature count larger than the arguments" fleece -EINVAL "$F" "$FL $o $f 8 2 fail_origin_writes"
reject "feature count not a number" fleece -EINVAL "$F" "$FL $o $f 8 x fail_origin_writes"
reject "feature count negative" fleece -EINVAL "$F" "$FL $o $f 8 -1"
reject "feature count above 7" fleece -EINVAL "$F" \
	"$FL $o $f 8 8 fail_origin_writes cbw_timeout_ms 5 origin_offset 0 track_store $f fail_origin_writes"
reject "cbw_timeout_ms without its value" fleece -EINVAL "Feature cbw_timeout_ms needs a value" \
	"$FL $o $f 8 1 cbw_timeout_ms"
reject "cbw_timeout_ms not a number" fleece -EINVAL "Invalid cbw_timeout_ms: not a number of milliseconds" \
	"$FL $o $f 8 2 cbw_timeout_ms soon"
reject "cbw_timeout_ms negative" fleece -EINVAL "Invalid cbw_timeout_ms: not a number of milliseconds" \
	"$FL $o $f 8 2 cbw_timeout_ms -5"
reject "feature count 2^32+1 (must not wrap to 1)" fleece -EINVAL "$F" \
	"$FL $o $f 8 4294967297 fail_origin_writes"
reject "cbw_timeout_ms 2^32+500 (must not wrap to 500)" fleece -EINVAL \
	"Invalid cbw_timeout_ms: not a number of milliseconds" "$FL $o $f 8 2 cbw_timeout_ms 4294967796"
reject "cbw_timeout_ms with a unit" fleece -EINVAL "Invalid cbw_timeout_ms: not a number of milliseconds" \
	"$FL $o $f 8 2 cbw_timeout_ms 100ms"

log "fleece: origin offset"
OO="Invalid origin_offset: not a number of sectors"
H="0 $((N / 2)) fleece"
reject "origin_offset without its value" fleece -EINVAL "Feature origin_offset needs a value" \
	"$H $o $f 8 1 origin_offset"
reject "origin_offset not a number" fleece -EINVAL "$OO" "$H $o $f 8 2 origin_offset far"
reject "origin_offset negative" fleece -EINVAL "$OO" "$H $o $f 8 2 origin_offset -8"
reject "origin_offset with a unit" fleece -EINVAL "$OO" "$H $o $f 8 2 origin_offset 4k"
reject "origin_offset 2^64+8 (must not wrap to 8)" fleece -EINVAL "$OO" \
	"$H $o $f 8 2 origin_offset 18446744073709551624"
reject "origin_offset at the origin's end" fleece -EINVAL \
	"Origin offset is beyond the end of the origin device" "$H $o $f 8 2 origin_offset $N"
reject "origin_offset leaving no room for the region" fleece -EINVAL \
	"Origin device is smaller than origin_offset plus the target" \
	"$H $o $f 8 2 origin_offset $((N / 2 + 8))"
modprobe loop
truncate -s 8M lbs4k.img
lbs4k=$(losetup -f --show -b 4096 lbs4k.img)
held+=("/sys/block/$(sysfs_name "$lbs4k")/holders")
reject "origin_offset not a multiple of the origin's 4 KiB blocks" fleece -EINVAL \
	"Origin offset is not a multiple of the origin's logical block size" \
	"$H $lbs4k $f 8 2 origin_offset 4"

log "fleece: devices"
# A missing path: dm core says ENODEV (6.1) or ENOENT (6.12).
reject "fleece device smaller than the region" fleece -EINVAL "Fleece device is smaller than the target" \
	"$FL $o $small 8"
reject "origin smaller than the region" fleece -EINVAL "Origin device is smaller than the target" \
	"$FL $small $f 8"
reject "origin equal to fleece" fleece -EINVAL "Origin and fleece devices must differ" "$FL $o $o 8"
reject "origin equal to fleece (path and number)" fleece -EINVAL "Origin and fleece devices must differ" \
	"$FL $o $(devno o) 8"
reject "nonexistent origin" fleece "-ENODEV|-ENOENT" "Cannot open origin device" "$FL /dev/nonexistent $f 8"
reject "nonexistent fleece" fleece "-ENODEV|-ENOENT" "Cannot open fleece device" "$FL $o /dev/nonexistent 8"

VW="0 $N fleece-view"
log "fleece-view: arguments and devices, no fleece live"
reject "view: no arguments" fleece-view -EINVAL "Expected 2 arguments" "$VW"
reject "view: one argument" fleece-view -EINVAL "Expected 2 arguments" "$VW $o"
reject "view: three arguments" fleece-view -EINVAL "Expected 2 arguments" "$VW $o $f 8"
reject "view: nonexistent origin" fleece-view "-ENODEV|-ENOENT" "Cannot open origin device" "$VW /dev/nonexistent $f"
reject "view: nonexistent fleece" fleece-view "-ENODEV|-ENOENT" "Cannot open fleece device" "$VW $o /dev/nonexistent"
reject "view: no live fleece" fleece-view -ENODEV \
	"No live fleece target for these origin and fleece devices" "$VW $o $f"

log "with a live fleece on (o, f) for the first 4 MiB"
dmsetup create live --table "0 $((N / 2)) fleece $o $f 8"
W="Devices do not match a live fleece: wrong origin/fleece pair"
reject "view: origin and fleece swapped" fleece-view -ENODEV "$W" "0 $((N / 2)) fleece-view $f $o"
reject "view: wrong fleece device" fleece-view -ENODEV "$W" "0 $((N / 2)) fleece-view $o $f2"
reject "view: wrong origin device" fleece-view -ENODEV "$W" "0 $((N / 2)) fleece-view $o2 $f"
reject "view: longer than the region" fleece-view -EINVAL "View is longer than the fleece region" "$VW $o $f"
reject "second fleece on the live fleece device" fleece -EBUSY \
	"Fleece device is already in use by a live fleece" "0 $((N / 2)) fleece $o2 $f 8"
reject "second fleece whose origin is the live fleece device" fleece -EBUSY \
	"Origin device is the fleece device of a live fleece" "0 $((N / 2)) fleece $f $o2 8"
reject "second fleece whose fleece is the live origin" fleece -EBUSY \
	"Fleece device is the origin of a live fleece" "0 $((N / 2)) fleece $o2 $o 8"
reject "second fleece of the live origin's region, another fleece device" fleece -EBUSY \
	"Origin range overlaps the region of a live fleece" "0 $((N / 2)) fleece $o $f2 8"
reject "second fleece overlapping the live region's last sector" fleece -EBUSY \
	"Origin range overlaps the region of a live fleece" \
	"0 $((N / 2)) fleece $o $f2 8 2 origin_offset $((N / 2 - 1))"
log "a second fleece of the same origin next to the live region is accepted"
dmsetup create next --table "0 $((N / 2)) fleece $o $f2 8 2 origin_offset $((N / 2))"
dmsetup remove next

log "a fleece loaded but never resumed"
dmsetup create --notable nr
dmsetup load nr --table "$FL $o2 $f2 8"
reject "view of a fleece never resumed" fleece-view -EAGAIN \
	"The fleece target for these devices has not been resumed yet" "$VW $o2 $f2"
dmsetup clear nr
dmsetup remove nr
reject "view once the unresumed table is cleared" fleece-view -ENODEV \
	"No live fleece target for these origin and fleece devices" "$VW $o2 $f2"

log "an invalid fleece: its fleece device fails every write"
dmsetup create errdev --table "0 $N error"
dmsetup create inv --table "$FL $o2 /dev/mapper/errdev 8"
dd if=old of=/dev/mapper/inv bs=4k count=1 oflag=direct conv=notrunc status=none ||
	fail "the origin write failed although the default policy lets it through"
assert_eq "$(status_field inv 7)" invalid "state of a fleece whose copy failed"
reject "view of an invalid fleece" fleece-view -EIO "The fleece for these devices is invalid" \
	"$VW $o2 /dev/mapper/errdev"
dmsetup remove inv
dmsetup remove errdev

log "reloads of the live fleece that cannot hand its state over"
dmsetup create lv --table "0 $((N / 2)) fleece-view $o $f"
udevadm settle
dd if=new of=/dev/mapper/live bs=4k count=1 oflag=direct conv=notrunc status=none
copies_settle live
table=$(dmsetup table live)
before=$(dmsetup status live)
refused "reload with another chunk size" fleece -EINVAL "Chunk size differs from the live fleece of these devices" \
	dmsetup load live --table "0 $((N / 2)) fleece $o $f 16"
dmesg_since_start | grep_q "chunk size 16 differs from the live fleece of these devices (8)" ||
	problem "reload with another chunk size" "no kernel message naming both chunk sizes"
refused "reload with another length" fleece -EINVAL "Length differs from the live fleece of these devices" \
	dmsetup load live --table "0 $((N / 4)) fleece $o $f 8"
refused "reload with another origin offset" fleece -EINVAL \
	"Origin offset differs from the live fleece of these devices" \
	dmsetup load live --table "0 $((N / 2)) fleece $o $f 8 2 origin_offset 8"
dmesg_since_start | grep_q "origin offset 8 differs from the live fleece's (0 sectors)" ||
	problem "reload with another origin offset" "no kernel message naming both offsets"
dmsetup info live | grep_q "Tables present: *LIVE$" || fail "the refused reloads left an inactive table"
assert_eq "$(dmsetup table live)" "$table" "table after the refused reloads"
assert_eq "$(dmsetup status live)" "$before" "status after the refused reloads"
log "the old table still works: a write copies, the view keeps the old data"
dd if=new of=/dev/mapper/live bs=4k skip=100 seek=100 count=1 oflag=direct conv=notrunc status=none
assert_eq "$(fleece_counts live)" "$((N / 16 - 2)) 2 0 2 0 active" "status after a write following the refused reloads"
cmp <(dev_range /dev/mapper/lv 0 $((N / 4))) <(file_range old 0 $((N / 4))) ||
	fail "the view differs from the point-in-time image after the refused reloads"
dmsetup remove lv
dmsetup remove live

log "valid tables with feature arguments are accepted, and reproduced by dmsetup table"
for feat in "1 fail_origin_writes" "2 cbw_timeout_ms 250" "3 fail_origin_writes cbw_timeout_ms 250"; do
	dmsetup create ok --table "$FL $o2 $f2 8 $feat"
	assert_eq "$(dmsetup table ok)" "$FL $(devno o2) $(devno f2) 8 $feat" "table line with features '$feat'"
	dmsetup remove ok
done
for feat in "2 origin_offset 8" "5 fail_origin_writes cbw_timeout_ms 250 origin_offset 4096" \
	    "2 origin_offset 8192"; do
	dmsetup create ok --table "$H $o2 $f2 8 $feat"
	assert_eq "$(dmsetup table ok)" "$H $(devno o2) $(devno f2) 8 $feat" "table line with features '$feat'"
	dmsetup remove ok
done
dmsetup create ok --table "$H $lbs4k $f2 8 2 origin_offset 8"
dmsetup remove ok
losetup -d "$lbs4k"

log "sanity: a valid fleece and view still work"
fo=$(fleece_create fo "$o" "$f" 128)
view=$(view_create fv "$o" "$f")
udevadm settle
put new "$fo"
same "$fo" new "origin after the overwrite"
cp old expect
dd if=new of=expect bs=4k count=1 conv=notrunc status=none	# written through "live" above
dd if=new of=expect bs=4k seek=100 skip=100 count=1 conv=notrunc status=none
same "$view" expect "view after the overwrite"
assert_eq "$(fleece_counts fo)" "0 128 0 128 0 active" "status after the overwrite"
dmsetup remove fv
dmsetup remove fo

log "an origin too large for memory at its chunk size (512 TiB, chunk 8)"
modprobe dm-zero
dmsetup create z1 --table "0 $((1 << 40)) zero"
dmsetup create z2 --table "0 $((1 << 40)) zero"
reject "origin too large for memory" fleece -ENOMEM "Origin too large for memory at this chunk size" \
	"0 $((1 << 40)) fleece /dev/mapper/z1 /dev/mapper/z2 8"
dmesg_since_start | grep_q -E "cannot allocate [0-9]+ bytes of chunk state" ||
	problem "origin too large for memory" "no kernel message saying how much memory it needed"
dmsetup remove z1 z2

log "$n malformed lines tried, ${#problems[@]} problems"
[ $n -ge 30 ] || fail "only $n cases"
if [ ${#problems[@]} -gt 0 ]; then
	printf '%s\n' "${problems[@]}" >&2
	fail "${#problems[@]} of $n bad-input cases misbehaved"
fi
