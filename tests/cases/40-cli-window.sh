#!/bin/bash
# The suspend window of start and stop, with lvm2's discipline: the memory
# is locked first (mlockall: no page fault may wait for I/O to a suspended
# device that holds the tool's own files), nothing is written while a
# device is suspended (a message made in the window is held until the
# resume: a terminal or a pipe on the suspended device would block the
# tool forever), and each state file is durable (the directory synced
# after the rename that installs it).  Checked on strace's record of the
# system calls, which decodes the device-mapper ioctls: a suspend is a
# DM_DEV_SUSPEND carrying DM_SUSPEND_FLAG, a resume one without it.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
cli_fixture 16 64
fl=$(mkdev fl 16 2)

# traced LOG CMD...: CMD under strace (-y: the paths of the fds), its
# status in $rc.
traced() { # log cmd...
	local log=$1
	shift
	rc=0
	strace -f -qq -y -s 256 -o "$log" -e trace=mlockall,ioctl,write,rename,fsync "$@" || rc=$?
}

# window LOG WHAT: the suspend window in LOG is sound: a suspend and the
# resume after it found, mlockall before the suspend, no write to any fd
# between them.  Sets $resume_line.
window() { # log what
	local lines s r m w
	lines=$(awk '/DM_DEV_SUSPEND/ { print NR ":" (/DM_SUSPEND_FLAG/ ? "s" : "r") }' "$1")
	s=$(sed -n 's/:s$//p' <<< "$lines" | head -n 1)
	[ -n "$s" ] || { grep DM_DEV_SUSPEND "$1"; fail "$2: no suspend in the trace (does strace decode the dm ioctls?)"; }
	r=$(awk -F: -v s="$s" '$1 > s && $2 == "r" { print $1; exit }' <<< "$lines")
	[ -n "$r" ] || fail "$2: no resume after the suspend at line $s"
	m=$(awk '/^[0-9]+ +mlockall\(/ && index($0, "(MCL_CURRENT|MCL_FUTURE)") && / = 0$/ { print NR; exit }' "$1")
	[ -n "$m" ] && [ "$m" -lt "$s" ] || fail "$2: no mlockall before the suspend (line ${m:-none}, suspend $s)"
	w=$(awk -v s="$s" -v r="$r" 'NR > s && NR < r && /^[0-9]+ +write\(/' "$1")
	[ -z "$w" ] || fail "$2: written while suspended (lines $s to $r): $w"
	resume_line=$r
}

# durable LOG WHAT: every rename into the state directory is followed by
# an fsync of that directory before the next rename.
durable() { # log what
	awk -v d="$FLEECE_STATE_DIR" -v real="$(realpath "$FLEECE_STATE_DIR")" -v what="$2" '
		/^[0-9]+ +rename\(/ && index($0, "\"" d "/") { if (want) bad = bad " " want; want = NR; n++ }
		want && /^[0-9]+ +fsync\(/ && index($0, "<" real ">") { want = 0 }
		END {
			if (want) bad = bad " " want
			if (!n) { print what ": no state file renamed into " d; exit 1 }
			if (bad) { print what ": no fsync of " d " after the renames at lines" bad; exit 1 }
		}' "$1" || fail "$2: the state directory is not synced after a rename"
}

step "a start that fails in the window: its message comes after the resume"
traced t.fail env FLEECE_FAULT=table-check@1=EIO $F start --fleece-dev "$fl" data
assert_eq "$rc" 1 "exit status of the start that fails in the window"
window t.fail "the failed start"
m=$(grep -n 'write(2<[^>]*>, ".*cannot read its table again' t.fail | head -n 1 | cut -d: -f1)
[ -n "$m" ] || fail "the window's message was never written"
[ "$m" -gt "$resume_line" ] || fail "the window's message was written at line $m, before the resume at $resume_line"
as_before "the failed start"

step "a start and a stop: no output while suspended, the state durable"
traced t.start $F start --fleece-dev "$fl" data
assert_eq "$rc" 0 "exit status of start"
window t.start "start"
durable t.start "start"
dmsetup table data | grep -q " fleece " || fail "data is not fleeced"
same /dev/mapper/data-fleece-view pat "the view"
traced t.stop $F stop data
assert_eq "$rc" 0 "exit status of stop"
window t.stop "stop"
as_before "after the stop"
umount /mnt/fdir
step "ok"
