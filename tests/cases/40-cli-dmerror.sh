#!/bin/bash
# A device-mapper query that fails is not "no such device": stop, status
# and stop --all say what failed and exit non-zero, and change nothing (the
# state file, the unfinished backup and the devices stay).
#  1. as an unprivileged user (a real EACCES from /dev/mapper/control):
#     "must be run as root", for stop, status, and start, backup and read
#     (exit 1, not the "no such device" refusal);
#  2. as root, queries failing with EIO or ENOENT through the test-only
#     fault hook FLEECE_FAULT (tools/util.c), at each query stop makes.
# Then the same stop as root, without faults, cleans up as usual.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
cli_fixture 16 32
# Shared with the unprivileged user: state and locks in a directory it owns,
# so that nothing but device-mapper can refuse it.
sdir=$(mktemp -d /tmp/fleece-state.XXXXXX)
ldir=$(mktemp -d /tmp/fleece-lock.XXXXXX)
chmod 755 "$sdir"
export FLEECE_STATE_DIR=$sdir FLEECE_LOCK_DIR=$ldir
cp "$F" /tmp/fleece-nobody && chmod 755 /tmp/fleece-nobody
cleanup() { rm -rf "$sdir" "$ldir" /tmp/fleece-nobody; }
trap cleanup EXIT
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

step "a running fleece, with an unfinished backup recorded"
$F start -q --fleece-dir /mnt/fdir data
sed -i "\$a partial=$PWD/out.img.partial" "$sdir/data"
echo "half an image" > out.img.partial
chown -R 65534:65534 "$sdir" "$ldir"
tables=$(dmsetup table)
state=$(cat "$sdir/data")
still_there() { # what
	[ "$(dmsetup table)" = "$tables" ] || fail "$1: devices or tables changed: $(dmsetup table)"
	[ -e "$sdir/data" ] || fail "$1: the state file was removed"
	assert_eq "$(cat "$sdir/data")" "$state" "$1: the state file"
	assert_eq "$(cat out.img.partial 2>/dev/null)" "half an image" "$1: the unfinished backup"
	[ -e /mnt/fdir/data.fleece ] || fail "$1: the fleece file was removed"
}
# rc STATUS, stderr matching REGEX, nothing on stdout, nothing changed
refused() { # status regex what -- command...
	local want=$1 re=$2 what=$3 rc=0
	shift 4
	"$@" > q.out 2> q.err || rc=$?
	cat q.err
	assert_eq "$rc" "$want" "$what: exit status"
	grep -Eq "$re" q.err || fail "$what: stderr does not match '$re'"
	[ ! -s q.out ] || fail "$what: printed on stdout: $(cat q.out)"
	still_there "$what"
}

step "1. not root: a real EACCES"
refused 1 "must be run as root" "stop as nobody" -- as_nobody /tmp/fleece-nobody stop data
refused 1 "must be run as root" "stop --all as nobody" -- as_nobody /tmp/fleece-nobody stop --all
refused 1 "must be run as root" "status as nobody" -- as_nobody /tmp/fleece-nobody status
refused 1 "must be run as root" "status data as nobody" -- as_nobody /tmp/fleece-nobody status data
refused 1 "must be run as root" "status --json as nobody" -- as_nobody /tmp/fleece-nobody status --json
refused 1 "must be run as root" "stop /dev/mapper/data as nobody" -- \
	as_nobody /tmp/fleece-nobody stop /dev/mapper/data
# start, backup and read: a failed query is no "no such device" (exit 3)
refused 1 "must be run as root" "start /dev/mapper/data as nobody" -- \
	as_nobody /tmp/fleece-nobody start --fleece-dir /tmp /dev/mapper/data
refused 1 "must be run as root" "start data as nobody" -- \
	as_nobody /tmp/fleece-nobody start --fleece-dir /tmp data
refused 1 "must be run as root" "backup as nobody" -- \
	as_nobody /tmp/fleece-nobody backup --fleece-dir /tmp data -o /tmp/nobody.img
[ ! -e /tmp/nobody.img.partial ] && [ ! -e /tmp/nobody.img ] || fail "backup as nobody left output"
refused 1 "must be run as root" "read as nobody" -- \
	as_nobody /tmp/fleece-nobody read /dev/mapper/data-fleece-view -o /tmp/nobody.img

step "2. root, queries failing (test fault hook)"
# Root refuses state and lock directories owned by another user.
chown -R 0:0 "$sdir" "$ldir"
# stop queries the view, the hidden origin, then NAME (info), then tables.
for f in dm-info@1=EIO dm-info@2=EIO dm-info@3=ENOENT dm-table=EIO dm-info=EACCES; do
	refused 1 "cannot query" "stop, $f" -- env FLEECE_FAULT=$f $F stop data
done
refused 1 "cannot list the device-mapper devices: Input/output error" "stop --all, dm-list" -- \
	env FLEECE_FAULT=dm-list=EIO $F stop --all
for f in dm-list=EIO dm-info=EIO dm-info@2=EIO dm-table=EIO dm-status=EIO; do
	refused 1 "cannot (query|list)" "status --json, $f" -- env FLEECE_FAULT=$f $F status --json
	refused 1 "cannot (query|list)" "status, $f" -- env FLEECE_FAULT=$f $F status
done
for f in dm-info@1=EIO dm-info@2=EIO dm-info@3=EIO dm-table=EIO dm-status@1=EIO dm-status@2=EIO; do
	refused 1 "cannot query" "status data, $f" -- env FLEECE_FAULT=$f $F status data
done

step "the same stop without faults cleans up"
$F status data | grep -q "^data: active" || fail "status after the failed queries"
$F stop data
[ ! -e out.img.partial ] || fail "stop left the unfinished backup"
rm -f q.out q.err
as_before "after the stop"
[ -z "$(ls -A "$sdir")" ] || fail "state left: $(ls -A "$sdir")"
umount /mnt/fdir
step "ok"
