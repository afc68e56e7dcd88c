# Helpers for the tests in tests/cases: sourced at the top of each test.
# A test is a bash script that runs inside the VM as root; it passes by
# exiting 0.  Anything else, or a kernel splat while it runs, fails it.
# Tests tear down loop, dm and lvm devices and unmount things: they refuse
# to run anywhere but in the test VM, whose kernel command line run.sh gives
# the token fleece_test_guest=1.  This line comes first here, and first in
# every test script (before it sources this file):
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

T_DMESG_START=$(dmesg | wc -l)
export DM_UDEV_DISABLE_LIBRARY_FALLBACK=1

# Each section says when it began, in seconds since the test started: every
# run is its own profile.
log() { echo "== ${SECONDS}s $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# The value of NAME=value on the kernel command line (run.sh passes the
# run's settings there: fleece.module=, fleece.tier=, fleece.stress_seed=).
arg() { sed -n "s/.*\\<$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
# The tier of the run (make check TIER=long): a loop that hunts leaks or
# races runs more rounds in the longer tier.  tiered CI LONG prints the
# count for this run.
TIER=$(arg fleece.tier)
tiered() { if [ "$TIER" = long ]; then echo "$2"; else echo "$1"; fi; }
# The test cannot run here, for a reason the report shows: "ok N name # SKIP
# reason".  Only for a condition of the environment that the test checks
# (no udevd in the debug guest, say), never for a failure.
skip() { echo "SKIP: $*"; exit 77; }
trap 'rc=$?; [ $rc = 0 ] || echo "FAIL: line $LINENO: exit $rc: $BASH_COMMAND" >&2' ERR

assert_eq() { # actual expected what
	[ "$1" = "$2" ] || fail "$3: got '$1', expected '$2'"
}

# Run "$@"; it must fail.  Its stderr is kept in $T_ERR.
expect_fail() {
	if T_ERR=$("$@" 2>&1 >/dev/null); then
		fail "expected failure: $*"
	fi
}

# Kernel log lines written since the test started.
dmesg_since_start() { dmesg | tail -n +$((T_DMESG_START + 1)); }

# grep -q for the end of a pipe: grep -q exits at the first match, and a
# writer still writing then dies of SIGPIPE, which pipefail turns into a
# failed pipeline.  This one reads its input to the end.
grep_q() { grep "$@" > /dev/null; }

expect_dmesg() { # extended regex
	dmesg_since_start | grep_q -E "$1" || fail "no kernel message matching '$1'"
}

# --- block devices ---------------------------------------------------------
# Slices of the ram disks /dev/ram0..3 (1 GiB each), as dm-linear devices.

mkdev() { # name MiB [ram index]
	local name=$1 mib=$2 ram=${3:-0} f off
	f=/tmp/.ram$ram.next
	off=$(cat "$f" 2>/dev/null || echo 0)
	echo $((off + mib * 2048)) > "$f"
	[ $((off + mib * 2048)) -le 2097152 ] || fail "ram$ram is full"
	dmsetup create "$name" --table "0 $((mib * 2048)) linear /dev/ram$ram $off"
	echo "/dev/mapper/$name"
}

sectors() { blockdev --getsz "$1"; }

# A file of pseudo-random data, reproducible from its seed.
mkpattern() { # file MiB seed
	openssl enc -aes-128-ctr -pass "pass:$3" -nosalt -pbkdf2 \
		-in <(head -c $(($2 << 20)) /dev/zero) -out "$1" 2>/dev/null ||
		head -c $(($2 << 20)) /dev/urandom > "$1"
}

put() { # file dev [offset in 512-byte sectors]
	dd if="$1" of="$2" bs=1M oflag=direct,seek_bytes seek=$((${3:-0} * 512)) \
		conv=notrunc status=none
}

# Byte-for-byte comparison of a device (O_DIRECT) with a file.
same() { # dev file what
	cmp <(dd if="$1" bs=1M iflag=direct status=none) "$2" ||
		fail "$3: $1 differs from $2"
}

# Bytes [off, off+len) of a device, O_DIRECT, in 4 KiB units.
dev_range() { # dev offset_kib len_kib
	dd if="$1" bs=4k skip=$(($2 / 4)) count=$(($3 / 4)) iflag=direct status=none
}
file_range() { # file offset_kib len_kib
	dd if="$1" bs=4k skip=$(($2 / 4)) count=$(($3 / 4)) status=none
}

# --- fleece ----------------------------------------------------------------

fleece_create() { # name origin fleece chunk_sectors [feature args...]
	local name=$1 origin=$2 fl=$3 chunk=$4
	shift 4
	local feat=""
	[ $# -gt 0 ] && feat=" $# $*"
	dmsetup create "$name" --table "0 $(sectors "$origin") fleece $origin $fl $chunk$feat"
	echo "/dev/mapper/$name"
}

view_create() { # name origin fleece
	dmsetup create "$1" --table "0 $(sectors "$2") fleece-view $2 $3"
	echo "/dev/mapper/$1"
}

# "major:minor" of a dm device, as table lines show devices.
devno() { # dm-name
	dmsetup info -c --noheadings -o major,minor --separator : "$1"
}

# Field N (0-based) of a target's status, after "<start> <len> <type>".
status_field() { # dm-name N
	dmsetup status "$1" | awk -v n="$2" '{ print $(n + 4) }'
}

# The /sys/block name of a block device (dm-N for /dev/mapper/NAME), from its
# device number: without udev, /dev/mapper/NAME is a node, not a symlink.
sysfs_name() { # device
	local mm
	mm=$(stat -Lc '%t %T' "$1") || return 1
	basename "$(readlink -f "/sys/dev/block/$((16#${mm% *})):$((16#${mm#* }))")"
}

# fleece status as "pending copied released cbw errors state in_flight",
# from one status line, as it is now
fleece_counts_now() { dmsetup status "$1" | awk '{ print $6, $7, $8, $9, $10, $11, $12 }'; }
copies_in_flight() { status_field "$1" 8; }
# "STATE COPIES_IN_FLIGHT" from one status: a pair that held at one moment.
state_and_copies() { dmsetup status "$1" | awk '{ print $11, $12 }'; }

# Waits up to 30 s until no copy is in flight.  Without fail_origin_writes
# an origin write completes once the old chunk is in memory, before its
# copy reaches the fleece device and the chunk counts as copied.
copies_settle() { # dm-name
	local i
	for ((i = 0; i < 300; i++)); do
		[ "$(copies_in_flight "$1")" = 0 ] && return
		sleep 0.1
	done
	fail "$1: copies still in flight after 30 s: $(dmsetup status "$1")"
}

# "pending copied released cbw errors state", once every copy started so
# far has ended.
fleece_counts() { copies_settle "$1"; fleece_counts_now "$1" | cut -d' ' -f1-6; }

# --- kernel messages since a mark (added with tests 30-32) -----------------
# dmesg_mark writes a numbered mark into the kernel log; the others look only
# at what came after it, so that one case's messages do not satisfy the
# next's.  A mark, not a line count: the log is a ring and may wrap.
T_DMESG_MARKS=0
dmesg_mark() {
	T_DMESG_MARKS=$((T_DMESG_MARKS + 1))
	T_DMESG_MARK="fleece-test: mark $$.$T_DMESG_MARKS"
	echo "$T_DMESG_MARK" > /dev/kmsg
}
dmesg_since_mark() {
	dmesg | awk -v m="$T_DMESG_MARK" 'seen { print } index($0, m) { seen = 1 }'
}
expect_dmesg_since_mark() { # extended regex
	dmesg_since_mark | grep_q -E "$1" || fail "no kernel message matching '$1' since the mark"
}

# --- the fleece command (added with tests 40-cli) --------------------------
# A private copy of tools/fleece for one test, run from the scratch dir.
# Any "make check" on the host rebuilds tools/fleece, also while a VM runs
# from the same tree; a guest that already mapped the old binary through
# its 9p/overlay root keeps old pages cached and reads the new file for the
# rest: the binary crashes (SIGSEGV) or does something in between.  A copy
# taken once at the start is what the whole test runs.
fleece_bin() {
	cp "$SRC/tools/fleece" "$PWD/.fleece-bin" && echo "$PWD/.fleece-bin"
}

# Run "$@"; it must exit with STATUS exactly (expect_fail takes any
# failure).  Its stderr is kept in $T_ERR.
expect_exit() { # status command...
	local want=$1 rc=0
	shift
	T_ERR=$("$@" 2>&1 >/dev/null) || rc=$?
	[ "$rc" = "$want" ] || fail "exit $rc, expected $want: $*: $T_ERR"
}

step() { echo "== $(date +%T) $*"; }

no_fleece_devices() {
	local u
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "FLEECE- devices left: $u"
}

# ab_writer A B STOPFILE: O_DIRECT|O_DSYNC 4 KiB writes of a sequence
# number at offset 0 of A and B in turn (A gets 1, B 2, A 3, ...) until
# STOPFILE exists; the last number written is in ./last.  Two devices
# taken at one point in time hold consecutive numbers.
ab_writer() {
	python3 - "$@" <<'PY'
import mmap, os, sys
devs = [os.open(d, os.O_RDWR | os.O_DIRECT | os.O_DSYNC) for d in sys.argv[1:3]]
buf = mmap.mmap(-1, 4096)
seq = 0
while not os.path.exists(sys.argv[3]):
    seq += 1
    buf.seek(0)
    buf.write(b"%020d\n" % seq)
    os.pwrite(devs[0 if seq % 2 else 1], buf, 0)
    with open("last.tmp", "w") as f:
        f.write("%d\n" % seq)
    os.rename("last.tmp", "last")
PY
}

# The device "data" (pattern file "pat"), its table in $table, and an ext4
# mounted on /mnt/fdir for fleece files; as_before checks that all of it is
# as it was and nothing fleece(8) makes is left.
cli_fixture() { # data_MiB fs_MiB
	data=$(mkdev data "$1")
	mkpattern pat "$1" pat
	put pat "$data"
	table=$(dmsetup table data)
	fsdev=$(mkdev fsdev "$2" 1)
	mkfs.ext4 -q -F "$fsdev"
	mkdir -p /mnt/fdir
	mount "$fsdev" /mnt/fdir
	# The globs in as_before match nothing when nothing is left.
	shopt -s nullglob dotglob
}

# Under TCG each program started costs much: two dmsetup runs, the rest
# shell built-ins.
as_before() { # what
	local info f
	info=$(dmsetup info -c --noheadings -o name,uuid,suspended --separator ' ')
	[[ $info != *FLEECE-* ]] || fail "$1: FLEECE- devices left: $info"
	[[ $'\n'$info$'\n' =~ $'\n'data\ +Active\ *$'\n' ]] || fail "$1: data is not there, active: $info"
	assert_eq "$(dmsetup table data)" "$table" "$1: table of data"
	f=(/sys/block/loop*/loop)	# only while a loop device is attached
	[ ${#f[@]} = 0 ] || fail "$1: loop devices left: ${f[*]}"
	f=(/mnt/fdir/* state/* out.img*)
	[ "${f[*]}" = /mnt/fdir/lost+found ] || fail "$1: files left: ${f[*]}"
	same "$data" pat "$1: data's content"
}

# Nothing that a backup makes is left: no FLEECE- device, no loop device,
# no state file in ./state, no FILE.partial in DIR (default .), and, when
# given, nothing in the fleece directory FDIR (40-cli-backup, 42-incremental*).
no_leftovers() { # [DIR [FDIR]]
	local u dir=${1:-.}
	u=$(dmsetup info -c --noheadings -o uuid 2>/dev/null | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "FLEECE- devices left: $u"
	[ -z "$(losetup -a)" ] || fail "loop devices left: $(losetup -a)"
	[ -z "$(ls -A state 2>/dev/null)" ] || fail "state files left: $(ls state)"
	! ls "$dir"/*.partial 2>/dev/null || fail ".partial files left in $dir"
	[ -z "${2:-}" ] || [ -z "$(ls -A "$2")" ] || fail "fleece files left: $(ls "$2")"
}

# A changed map's (backup --changed-map) field as JSON, and its extents as
# "offset+length" lines.
map_field() { # map key
	python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"
}
map_extents() { # map
	python3 -c 'import json,sys; [print("%d+%d" % tuple(e)) for e in json.load(open(sys.argv[1]))["extents"]]' "$1"
}

# --- slow, stalled and failing devices (tests 32-policies, 33-faults) -------

ms() { date +%s%3N; }

expect_eio() { # command...
	expect_fail "$@"
	[[ $T_ERR == *"Input/output error"* ]] || fail "$*: expected an I/O error, got: $T_ERR"
}

# Writes a dm device has completed (its I/O statistics; its in-flight counts
# stay 0 while dm-delay holds a bio, so they cannot tell).
iostats_on() { # dm-name
	echo 1 > "/sys/block/$(sysfs_name "/dev/mapper/$1")/queue/iostats"
}
writes_done() { # dm-name
	awk '{ print $5 }' "/sys/block/$(sysfs_name "/dev/mapper/$1")/stat"
}
wait_writes_done() { # dm-name count: polls for up to 30 s
	local i
	for ((i = 0; i < 300; i++)); do
		[ "$(writes_done "$1")" -ge "$2" ] && return 0
		sleep 0.1
	done
	fail "$1: $(writes_done "$1") writes done after 30 s, expected $2"
}

# A dm-delay device submits the bios it holds when it is suspended.
release_delayed() { # dm-delay name
	dmsetup suspend "$1"
	dmsetup resume "$1"
}

# Run a command in the background (its output in OUT, its pid in $pid)
# until it stops itself at its fault point (FLEECE_FAULT=<point>=STOP):
# fails if it ends before, or does not get there within 60 s.
run_held() { # out command...
	local out=$1 i
	shift
	"$@" > "$out" 2>&1 &
	pid=$!
	for i in $(seq 1 600); do
		[ "$(awk '{ print $3 }' /proc/$pid/stat 2>/dev/null)" = T ] && return 0
		kill -0 $pid 2>/dev/null || { cat "$out"; fail "$* ended before its fault point"; }
		sleep 0.1
	done
	fail "$* does not reach its fault point"
}

# --- dm-ima (11-origin-offset, 37-track) -------------------------------------

# Load, once per boot, an IMA policy that records device-mapper's critical
# data (Debian's kernels take one policy write per boot).  Returns 1 where
# the kernel has no IMA, which only the debug kernel may lack, and says so.
ima_setup() {
	local sec=/sys/kernel/security
	if [ -d $sec ]; then
		mountpoint -q $sec || mount -t securityfs securityfs $sec
	fi
	if [ ! -d $sec/ima ]; then
		[[ $(uname -r) == *-fleece-debug ]] || fail "no IMA in this kernel (Debian's kernels have it)"
		log "no IMA in the debug kernel: dm-ima's records are not checked"
		return 1
	fi
	[ ! -e $sec/ima/policy ] ||
		echo "measure func=CRITICAL_DATA label=device-mapper template=ima-buf" > $sec/ima/policy
}
# The last record dm-ima made of a target of this type, at a table load.
ima_record() { # target-name
	awk '$5 == "dm_table_load" { print $6 }' /sys/kernel/security/ima/ascii_runtime_measurements |
		python3 -c 'import sys; [print(bytes.fromhex(l.strip()).decode("ascii", "replace")) for l in sys.stdin]' |
		grep -o "target_name=$1,[^;]*;" | tail -n 1
}
