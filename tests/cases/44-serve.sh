#!/bin/bash
# fleece serve: the frozen view over NBD (qemu-nbd), with real clients over
# loopback (nbdcopy, qemu-img, qemu-io from Debian):
#  1. bad options: exit 2 (3 for a missing server or device), a message
#     naming the problem, nothing changed;
#  2. --socket --persistent: the image a client copies equals the point in
#     time, also for what was written to NAME during the export (copied
#     before write); the client's trims release whole chunks (status
#     counters), as the reader's discards do, and free the fleece space; a
#     partial-chunk trim releases nothing; a released range reads as an
#     error; client writes and write-zeroes fail with an I/O error and
#     change nothing; SIGTERM ends it: exit 143, nothing left;
#  3. --tcp, not persistent, --export-name: the server ends after its
#     client, and serve with it: exit 0, nothing left;
#  4. two signals at once, and a server killed under serve: nothing left;
#  5. a stale socket is replaced; a server that cannot listen (port in
#     use): exit 1 with its reason, nothing left.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
spid=
cleanup() { [ -z "$spid" ] || kill -TERM $spid 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
kib() { du -k "$1" | cut -f1; }	# allocated KiB
ip link set lo up

cli_fixture 32 96			# data (pattern pat), /mnt/fdir, as_before
# Images and patterns on tmpfs: the scratch directory's overlay is slow.
mv pat /dev/shm/pat && ln -s /dev/shm/pat pat
mkpattern new 8 new
S=$PWD/nbd.sock
U="nbd+unix:///data?socket=$S"
f=/mnt/fdir/data.fleece
img=/dev/shm/img			# client images: tmpfs, not the 9p-backed overlay

# The chunk counts of data's fleece: "pending copied released".
counts() { fleece_counts data | cut -d' ' -f1-3; }

# Run serve in the background (stderr in serve.err, pid in $spid) and wait
# until its server listens on the socket or the TCP port
# (/proc/net/tcp: a client would count as the one client of the export).
serve_bg() { # how-to-wait (sock|PORT) args...
	local how=$1 i
	shift
	$F serve "$@" 2> serve.err &
	spid=$!
	for i in $(seq 1 300); do
		if [ "$how" = sock ]; then	# a listening socket, not a stale file
			awk -v p="$S" '$NF == p && $4 == "00010000" { f = 1 } END { exit !f }' \
				/proc/net/unix && return 0
		else
			grep_q -i "^ *[0-9]*: 0100007F:$(printf %04X "$how") 00000000:0000 0A" /proc/net/tcp && return 0
		fi
		kill -0 $spid 2>/dev/null || { cat serve.err; fail "serve ended before listening"; }
		sleep 0.1
	done
	cat serve.err
	fail "serve does not listen after 30 s"
}
# Wait for serve to end; its exit status must be $1.
serve_end() { # status what
	local rc=0 i
	for ((i = 0; i < 1200; i++)); do	# 2 minutes, then say where it hangs
		kill -0 $spid 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 $spid 2>/dev/null; then
		cat serve.err
		ps -eo pid,ppid,stat,wchan:32,args | grep -E 'fleece|qemu-nbd' || true
		cat /proc/$spid/stack 2>/dev/null || true
		dmsetup info -c || true
		fail "$2: serve does not end"
	fi
	wait $spid || rc=$?
	spid=
	cat serve.err
	[ "$rc" = "$1" ] || fail "$2: serve exited $rc, expected $1"
}

step "1. bad options: a clear message, nothing changed"
bad() { # status message-glob what args...
	local st=$1 want=$2 what=$3
	shift 3
	expect_exit "$st" $F serve "$@"
	echo "$what: $T_ERR"
	[[ $T_ERR == $want ]] || fail "$what: not the message expected ($want): $T_ERR"
	nothing_made "$what"
}
# What a refused serve could have made (as_before, the whole check, ends
# the step: it costs seconds).
nothing_made() { # what
	local u
	u=$(dmsetup info -c --noheadings -o uuid | grep '^FLEECE-' || true)
	[ -z "$u" ] || fail "$1: FLEECE- devices left: $u"
	[ ! -e $f ] && [ -z "$(ls -A state 2>/dev/null)" ] || fail "$1: fleece file or state made"
}
bad 2 "*where to listen: give --socket PATH or --tcp HOST:PORT*" "no address" -D /mnt/fdir data
bad 2 "*--socket and --tcp: give one of them*" "both" -D /mnt/fdir -k "$S" -T 127.0.0.1:10809 data
bad 2 "*--tcp '127.0.0.1': give HOST:PORT*" "no port" -D /mnt/fdir -T 127.0.0.1 data
bad 2 "*--tcp ':10809': no host*" "no host" -D /mnt/fdir -T :10809 data
bad 2 "*the port must be a number from 1 to 65535*" "port 0" -D /mnt/fdir -T 127.0.0.1:0 data
bad 2 "*the port must be a number from 1 to 65535*" "port 65536" -D /mnt/fdir -T 127.0.0.1:65536 data
bad 2 "*an IPv6 address goes in brackets*" "IPv6 without brackets" -D /mnt/fdir -T ::1:10809 data
bad 2 "*--socket /nonexistent/s: no directory /nonexistent*" "no directory" -D /mnt/fdir -k /nonexistent/s data
echo keep > "$PWD/file"
bad 2 "*--socket $PWD/file: exists and is not a socket*" "a file" -D /mnt/fdir -k "$PWD/file" data
assert_eq "$(cat file)" keep "the file named by --socket"
rm file
bad 2 "*one device at a time: 'data2' is one too many*" "two devices" -D /mnt/fdir -k "$S" data data2
bad 2 "*give the fleece space: --fleece-dev DEV or --fleece-dir DIR*" "no fleece space" -k "$S" data
bad 2 "*'{}' cannot be part of*" "{} in the export name" -D /mnt/fdir -k "$S" -x 'a{}' data
bad 2 "*unrecognized option*" "unknown option" -D /mnt/fdir -k "$S" --read-only data
mkdir -p empty
expect_exit 3 env PATH="$PWD/empty" $F serve -D /mnt/fdir -k "$S" data
[[ $T_ERR == *"qemu-nbd is not in PATH"*"apt install qemu-utils"* ]] || fail "no server: $T_ERR"
nothing_made "no server"
bad 3 "*nosuch: no such device-mapper device*" "no such device" -D /mnt/fdir -k "$S" nosuch
[ ! -e "$S" ] || fail "a refused serve left $S"
as_before "after the refused serves"

step "2. --socket --persistent: the point in time over NBD"
serve_bg sock -D /mnt/fdir --persistent -k "$S" data
nbdinfo "$U" | tee info.txt
grep_q "is_read_only: false" info.txt || fail "the export says it is read-only: trims would not be sent"
grep_q "can_trim: true" info.txt || fail "the export does not take trims"
grep_q "serving nbd+unix:///data?socket=$S (until SIGINT or SIGTERM)" serve.err || fail "no URI in serve's messages"
assert_eq "$(counts)" "512 0 0" "chunks at the start"
put new /dev/mapper/data		# during the export: 128 chunks copied before write
assert_eq "$(counts)" "384 128 0" "chunks after writing 8 MiB to data"
grown=$(kib $f)
echo "fleece file after the writes: $grown KiB"
[ "$grown" -ge 8192 ] || fail "the fleece file holds $grown KiB, expected the 8 MiB of copies"
t0=$SECONDS
nbdcopy "$U" $img
cmp $img pat || fail "nbdcopy: the image is not the point in time"
echo "nbdcopy: 32 MiB in $((SECONDS - t0)) s, equal to the point in time"
rm $img
assert_eq "$(counts)" "384 128 0" "chunks after a copy without trims"

step "2b. client writes fail, nothing changes"
# qemu-io must fail with MESSAGE (it prints it on standard output).
qemu_io_fails() { # message what qemu-io-args...
	local want=$1 what=$2 out
	shift 2
	if out=$(qemu-io -f raw "$@" 2>&1); then
		echo "$out"
		fail "$what: the client's request succeeded"
	fi
	echo "$what: $out"
	[[ $out == *"$want"* ]] || fail "$what: expected '$want', got: $out"
}
qemu_io_fails "write failed: Input/output error" "client write" "$U" -c 'write -P 0xaa 16M 64k'
qemu_io_fails "write failed: Input/output error" "client write-zeroes" "$U" -c 'write -z 0 64k'
qemu_io_fails "write failed: Input/output error" "client write-zeroes, may trim" \
	-d unmap "$U" -c 'write -z -u 64k 64k'
assert_eq "$(counts)" "384 128 0" "chunks after the refused writes"
qemu-img convert -f raw -O raw "$U" $img
cmp $img pat || fail "qemu-img convert: the image changed after the refused writes"
rm $img

step "2c. the client's trims release chunks and free the fleece space"
qemu-io -f raw -d unmap "$U" -c 'discard 4100k 4k'	# inside one chunk: nothing
assert_eq "$(counts)" "384 128 0" "chunks after a partial-chunk trim"
qemu-io -f raw -d unmap "$U" -c 'discard 0 4M'		# 64 copied chunks
assert_eq "$(counts)" "384 64 64" "chunks after trimming the first 4 MiB"
half=$(kib $f)
echo "fleece file after trimming 4 MiB: $half KiB"
[ "$half" -le $((grown - 4096)) ] || fail "the trims freed no fleece space: $grown -> $half KiB"
qemu_io_fails "read failed: Input/output error" "read of a released chunk" "$U" -c 'read 0 64k'
qemu-io -f raw -d unmap "$U" -c 'discard 4M 28M'	# the rest: 64 copied, 384 pending
assert_eq "$(counts)" "0 0 512" "chunks after trimming all"
left=$(kib $f)
echo "fleece file after trimming all: $left KiB"
[ "$left" -lt 256 ] || fail "the fleece file still holds $left KiB"
expect_exit 2 $F serve -D /mnt/fdir -k "$S" data
[[ $T_ERR == *"--socket $S: a server is listening there"* ]] || fail "a live socket: $T_ERR"
kill -TERM $spid
serve_end 143 "SIGTERM"
grep_q "signal 15: passed on to 'qemu-nbd'" serve.err || fail "serve does not say it passed SIGTERM on"
[ ! -e "$S" ] || fail "socket left: $S"
cmp <(dd if="$data" bs=1M count=8 iflag=direct status=none) new || fail "data lost what was written during the export"
put pat "$data"
as_before "after serve --persistent and SIGTERM"

step "3. --tcp, not persistent, --export-name: ends with its client"
serve_bg 10809 -D /mnt/fdir -T 127.0.0.1:10809 -x img data
grep_q "serving nbd://127.0.0.1:10809/img (until the client disconnects)" serve.err || fail "no URI in serve's messages"
qemu-img convert -f raw -O raw nbd://127.0.0.1:10809/img $img
cmp $img pat || fail "qemu-img convert over TCP: not the point in time"
rm $img
serve_end 0 "after its client"
as_before "after serve --tcp"

step "4. two signals at once; a server killed under serve"
serve_bg sock -D /mnt/fdir --persistent -k "$S" data
# qemu-nbd creates its socket before it opens the view, and a signal that
# comes meanwhile is lost (fleece(8), serve): a client first, so that the
# server surely runs.
nbdinfo --size "$U"
kill -INT $spid; kill -TERM $spid
serve_end 130 "SIGINT then SIGTERM"
[ ! -e "$S" ] || fail "socket left: $S"
as_before "after two signals"
serve_bg sock -D /mnt/fdir --persistent -k "$S" data
kill -KILL "$(pgrep -P $spid qemu-nbd)"
serve_end 1 "its server killed"
grep_q "'qemu-nbd' was killed by signal 9" serve.err || fail "serve does not say its server was killed"
[ -S "$S" ] || fail "no stale socket after qemu-nbd was killed"
as_before "after the server was killed"

step "5. a stale socket is replaced; a server that cannot listen"
serve_bg sock -D /mnt/fdir -k "$S" data
nbdinfo --size "$U"			# the one client: the export ends after it
serve_end 0 "on the stale socket"
python3 -c 'import socket, time; s = socket.socket(); s.bind(("127.0.0.1", 10810)); s.listen(); time.sleep(60)' &
busy=$!
for i in $(seq 1 100); do grep_q -i ": 0100007F:2A3A 00000000:0000 0A" /proc/net/tcp && break; sleep 0.1; done
expect_exit 1 $F serve -D /mnt/fdir -T 127.0.0.1:10810 data
echo "$T_ERR"
[[ $T_ERR == *"Address already in use"* ]] || fail "port in use: qemu-nbd's reason not shown: $T_ERR"
[[ $T_ERR == *"qemu-nbd ended with status 1: the export is over"* ]] || fail "port in use: $T_ERR"
kill $busy; wait $busy 2>/dev/null || true
as_before "after a server that could not listen"
step "ok"
