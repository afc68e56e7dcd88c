#!/bin/bash
# Bad arguments and refusals: each gets a message naming the problem, the
# documented exit status (2: usage, 3: refused), and changes nothing.
# Every subcommand has --help.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state

data=$(mkdev data 16)
fl=$(mkdev fl 16 1)
small=$(mkdev small 8 1)
# A table of two targets, which "start" moves to a hidden origin.
two0=$(mkdev two0 2)
two1=$(mkdev two1 2)
dmsetup create two --table "0 4096 linear $two0 0
4096 4096 linear $two1 0"
mkdir -p fdir

# Under TCG every program started costs a good fraction of a second: these
# checks use one dmsetup and shell built-ins.  "dmsetup table" lists every
# dm device with its table, so it catches any device that appears (FLEECE-
# or other) and any table that changes, not only data's.
shopt -s nullglob dotglob
# What there is: dm devices and tables, and the files fleece could leave
# (state, fleece files in fdir, output); loop devices are checked apart.
snapshot() { tables=$(dmsetup table); files=$(echo state/* fdir/* out.img*); }
snapshot
tables_before=$tables files_before=$files
unchanged() {
	local now f
	now=$(dmsetup table)
	[ "$now" = "$tables" ] || fail "$1: devices or tables changed: $now (was: $tables)"
	now=$(echo state/* fdir/* out.img*)
	[ "$now" = "$files" ] || fail "$1: files changed: $now (were: $files)"
	f=(/sys/block/loop*/loop)	# only while a loop device is attached
	[ ${#f[@]} = 0 ] || fail "$1: loop devices appeared: ${f[*]}"
}

# check STATUS REGEX -- command...: fails with STATUS, stderr matches REGEX
# (an extended regular expression), and nothing changed.
check() {
	local want=$1 re=$2 rc=0 err
	shift 2
	"$@" > out.txt 2> err.txt || rc=$?
	err=$(< err.txt)
	echo "\$ ${*#$F } -> $rc: ${err%%$'\n'*}"
	[ "$rc" = "$want" ] || { echo "$err"; fail "'$*': exit $rc, expected $want"; }
	[[ $err =~ $re ]] || { echo "$err"; fail "'$*': no message matching '$re'"; }
	unchanged "$*"
}

step "usage errors: exit 2"
check 2 "unknown command 'frobnicate'" $F frobnicate
check 2 "Usage" $F
check 2 "no device given" $F start --fleece-dev "$fl"
check 2 "give the fleece space" $F start data
check 2 "cannot be used together" $F start --fleece-dev "$fl" --fleece-dir fdir data
check 2 "chunk-size '3K': must be a power of two" $F start --chunk-size 3K --fleece-dev "$fl" data
check 2 "chunk-size '32M'" $F start --chunk-size 32M --fleece-dev "$fl" data
check 2 "chunk-size 'lots': not a size" $F start --chunk-size lots --fleece-dev "$fl" data
check 2 "cbw-timeout 'soon'" $F start --cbw-timeout soon --fleece-dev "$fl" data
check 2 "unrecognized option|bad option" $F start --bogus --fleece-dev "$fl" data
check 2 "2 device\(s\) to fleece but 1 --fleece-dev" $F start --fleece-dev "$fl" data small
check 2 "data given twice" $F start --fleece-dev "$fl,$small" data /dev/mapper/data
check 2 "no output given" $F backup --fleece-dev "$fl" data
check 2 "one device at a time" $F backup --fleece-dev "$fl" data small -o out.img
check 2 "a directory" $F backup --fleece-dev "$fl" data -o fdir
check 2 "rate 'fast'" $F backup --fleece-dev "$fl" --rate fast data -o out.img
check 2 "progress 'loud'" $F backup --fleece-dev "$fl" --progress loud data -o out.img
check 2 "no view given" $F read -o out.img
check 2 "no output given" $F read /dev/mapper/data
check 2 "no device given" $F stop
check 2 "--all and device names" $F stop --all data
check 2 "bad option|unrecognized" $F status --frob
check 2 "not a device name" $F stop 'bad$name'

step "refusals: exit 3"
check 3 "ram3: not a device-mapper device" $F start --fleece-dev "$fl" /dev/ram3
check 3 "not a device-mapper device" $F start --fleece-dev "$fl" ram3
check 3 "nosuch: no such device-mapper device" $F start --fleece-dev "$fl" nosuch
check 3 "fleece device /dev/mapper/small is too small: 8.00 MiB, and data needs 16.0 MiB" \
	$F start --fleece-dev "$small" data
check 3 "it is data itself" $F start --fleece-dev /dev/mapper/data data
check 3 "it is data itself, or part of it" $F start --fleece-dev /dev/ram0 data
check 3 "not a block device" $F start --fleece-dev /etc/passwd data
check 3 "No such file" $F start --fleece-dev /dev/nosuch data
check 3 "fleece-dir nodir" $F start --fleece-dir nodir data
check 3 "not a directory" $F start --fleece-dir /etc/passwd data
dmsetup create holder --table "0 8 linear $fl 0"
snapshot
check 3 "in use" $F start --fleece-dev "$fl" data
dmsetup remove holder
snapshot
check 3 "not a fleece view" $F read /dev/mapper/data -o out.img
check 3 "not a device-mapper device" $F read /dev/ram3 -o out.img

step "already fleeced"
$F start -q --fleece-dev "$fl,$small" data two
snapshot
assert_eq "$(dmsetup info -c --noheadings -o uuid | grep -c '^FLEECE-')" 3 \
	"devices of two fleeces: two views, one hidden origin"
check_fleeced() { check "$@"; }	# the same: nothing changes
check_fleeced 3 "data: already fleeced" $F start --fleece-dev "$small" data
check_fleeced 3 "already fleeced" $F backup --fleece-dir fdir data -o out.img
check_fleeced 3 "created by fleece" $F start --fleece-dev "$small" data-fleece-view
check_fleeced 3 "created by fleece" $F start --fleece-dev "$small" /dev/mapper/two-fleece-origin
check_fleeced 3 "a device created by fleece cannot be a fleece device" \
	$F start --fleece-dev /dev/mapper/data-fleece-view small
check_fleeced 3 "in use" $F start --fleece-dev "$fl" small
[ ! -e out.img ] && [ ! -e out.img.partial ] || fail "a refused backup left output"
$F stop -q data two
tables=$tables_before files=$files_before
unchanged "after stop"

step "no fleece target in the kernel: modprobe is tried, then the problem is named"
# The harness insmods the module named on the kernel command line and
# never installs it under /lib/modules, so modprobe cannot find it.  No
# fleece device exists here (checked by "unchanged" above): an unload that
# fails means a leaked reference, which is a bug, not a reason to skip.
module=$(arg fleece.module)
[ -f "$module" ] || fail "no module file on the kernel command line ('$module')"
# A modprobe earlier in PATH must not be the one run (root runs it).
mkdir -p evil
printf '#!/bin/sh\ntouch "%s/evil-ran"\n' "$PWD" > evil/modprobe
chmod +x evil/modprobe
rmmod dm_fleece || fail "dm_fleece cannot be unloaded with no fleece device left"
rc=0; PATH=$PWD/evil:$PATH $F start --fleece-dev "$fl" data 2> err.txt || rc=$?
insmod "$module" || fail "cannot load $module again"
cat err.txt
[ ! -e evil-ran ] || fail "modprobe was found through PATH"
assert_eq "$rc" 3 "start without the module"
grep -q "the kernel has no 'fleece' target and 'modprobe dm-fleece' failed" err.txt ||
	fail "no message about the missing module"
unchanged "without the module"

step "--help everywhere"
for c in start stop status backup read; do
	$F $c --help > help.txt || fail "fleece $c --help failed"
	grep -q "^Usage: fleece $c" help.txt || fail "fleece $c --help: $(head -1 help.txt)"
done
$F --help | grep_q "^Usage: fleece COMMAND" || fail "fleece --help"
$F --version | grep_q "^fleece " || fail "fleece --version"
step "ok"
