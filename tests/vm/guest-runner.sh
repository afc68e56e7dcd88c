# Sourced by guest.sh: runs one suite's tests and prints KTAP.
# Each test is a bash script run in a fresh scratch directory with fresh ram
# disks; after it, everything it left is torn down and the kernel log it
# produced is scanned for splats.
# Only ever in the test VM: its teardown unmounts everything below /mnt and
# detaches every loop and dm device.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }

TEST_TIMEOUT=$(arg fleece.test_timeout)
: "${TEST_TIMEOUT:=900}"

# Each step of the teardown is timed: a slow one (the debug kernel) shows in
# the report as a comment.
td_step() { td_steps+=" $1 $((SECONDS - td_t0))s"; td_t0=$SECONDS; }

teardown() {
	local t0=$SECONDS
	td_t0=$SECONDS td_steps=
	# A test that failed may leave a device suspended: resume it first, or
	# whatever waits on it (a view read held while its fleece origin is
	# suspended, lvm scanning that view) blocks the teardown for good.
	dmsetup info -c --noheadings -o name,suspended --separator ' ' 2>/dev/null |
		while read -r name state; do
			[ "$state" = Suspended ] && dmsetup resume "$name"
		done
	td_step resume
	# Unmount anything below /mnt, then drop every dm, lvm and loop device.
	grep -o ' /mnt[^ ]*' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
	td_step umount
	vgchange -an >/dev/null 2>&1
	td_step vgchange
	for i in 1 2 3; do
		dmsetup remove_all --force >/dev/null 2>&1
		[ -z "$(dmsetup ls 2>/dev/null | grep -v 'No devices')" ] && break
		sleep 1
	done
	td_step dm
	losetup -D 2>/dev/null
	udevadm settle --timeout=30
	td_step loop+settle
	# A modular brd goes, with its memory; a built-in one (the debug
	# kernel) is wiped where tests look first: discarded if it can be,
	# else zeroed by BLKZEROOUT (zero pages, no page cache), else by dd.
	if ! rmmod brd 2>/dev/null; then
		for d in /dev/ram[0-3]; do
			blkdiscard "$d" 2>/dev/null ||
				blkdiscard -z -l $((64 << 20)) "$d" 2>/dev/null ||
				dd if=/dev/zero of="$d" bs=1M count=64 oflag=direct status=none
		done
	fi
	td_step brd
	rm -f /tmp/.ram*.next
	[ $((SECONDS - t0)) -lt 10 ] || echo "# teardown took $((SECONDS - t0))s:$td_steps"
}

# The kernel log from the line holding $1 on: a mark, not a line count,
# since the log is a ring (log_buf_len is raised on the command line).
dmesg_since() {
	dmesg | awk -v m="$1" 'index($0, m) { seen = 1 } seen { print }'
}

# Does test $1 match one of the comma-separated substrings in $2?
name_matches() {
	local p
	IFS=, read -ra pats <<< "$2"
	for p in "${pats[@]}"; do
		[[ $1 == *"$p"* ]] && return 0
	done
	return 1
}

# The comma-separated words of $2 that match no test in $1 (an empty word
# counts as one: it would select everything).
unmatched_words() { # dir pattern
	local p t n found
	IFS=, read -ra pats <<< "$2,"
	for p in "${pats[@]}"; do
		found=
		for t in "$1"/*.sh; do
			n=${t##*/}
			[ -n "$p" ] && [ -f "$t" ] && [[ ${n%.sh} == *"$p"* ]] && { found=1; break; }
		done
		[ -n "$found" ] || printf '%s ' "'$p'"
	done
}

# The seconds test $1 may take: TEST_TIMEOUT, or more where the test's
# header says "# test-timeout: N" (a test that is long by design, mostly
# waits, and would otherwise be cut off on a slow, loaded CI machine).
test_limit() {
	local own
	own=$(sed -n '1,40s/^# test-timeout: \([0-9][0-9]*\).*/\1/p' "$1" | head -n 1)
	if [ -n "$own" ] && [ "$own" -gt "$TEST_TIMEOUT" ]; then
		echo "$own"
	else
		echo "$TEST_TIMEOUT"
	fi
}

run_suite() {
	local dir=$1 pattern=$2 t name n=0 failed=0 passed=0 skipped=0 tests=() rc bad reason
	for t in "$dir"/*.sh; do
		[ -f "$t" ] || continue
		name=$(basename "$t" .sh)
		if [ "$pattern" != all ] && ! name_matches "$name" "$pattern"; then
			continue
		fi
		tests+=("$t")
	done
	echo
	echo "KTAP version 1"
	echo "1..${#tests[@]}"
	# A selection that runs nothing, or a word of it that matches no test (a
	# renamed test, a typo in T=), fails the run: it must not pass quietly.
	if [ ${#tests[@]} = 0 ]; then
		echo "# no test in $dir matches '$pattern'"
		echo "# 0 passed, 0 failed"
		return 1
	fi
	bad=
	[ "$pattern" = all ] || bad=$(unmatched_words "$dir" "$pattern")
	if [ -n "$bad" ]; then
		echo "# words of T='$pattern' that match no test in $dir: $bad"
	fi
	for t in "${tests[@]}"; do
		n=$((n + 1))
		name=$(basename "$t" .sh)
		local mark="# $name: start $(date +%T)"
		echo "$mark" > /dev/kmsg
		modprobe brd rd_nr=4 rd_size=1048576 max_part=0 2>/dev/null ||
			[ -b /dev/ram3 ] || echo "# no ram disks: brd did not load"
		mkdir -p "/tmp/t/$name" && cd "/tmp/t/$name" || return 1
		local start=$SECONDS limit
		limit=$(test_limit "$t")
		timeout -k 10 "$limit" bash "$t" > "$OUT/$name.log" 2>&1
		rc=$?
		cd / && rm -rf "/tmp/t/$name"
		teardown
		local splat
		splat=$(dmesg_since "$mark" | grep -aE -B3 -A25 -f "$SRC/tests/vm/splat-patterns")
		local dur=$((SECONDS - start))
		# A test skips by exiting 77 after printing "SKIP: reason" (skip in
		# lib.sh); 77 without such a line is a failure like any other.
		reason=
		[ $rc = 77 ] && reason=$(sed -n 's/^SKIP: //p' "$OUT/$name.log" | tail -n 1)
		if [ $rc = 0 ] && [ -z "$splat" ]; then
			echo "ok $n $name # ${dur}s"
			passed=$((passed + 1))
		elif [ -n "$reason" ] && [ -z "$splat" ]; then
			echo "ok $n $name # SKIP $reason"
			skipped=$((skipped + 1))
		else
			echo "not ok $n $name # exit $rc after ${dur}s"
			[ $rc = 124 ] && echo "# timed out after ${limit}s"
			tail -n 40 "$OUT/$name.log" | sed 's/^/#   /'
			if [ -n "$splat" ]; then
				echo "# kernel splat during $name:"
				echo "$splat" | head -n 60 | sed 's/^/#   /'
			fi
			dmesg_since "$mark" > "$OUT/$name.dmesg"
			failed=$((failed + 1))
		fi
	done
	if [ $skipped = 0 ]; then
		echo "# $passed passed, $failed failed"
	else
		echo "# $passed passed, $failed failed, $skipped skipped"
	fi
	[ -z "$bad" ] || echo "# the run fails: T= has words that match no test: $bad"
	[ $failed = 0 ] && [ -z "$bad" ]
}
