#!/bin/bash
# The restic and borg recipes of fleece(8), with Debian 12's restic 0.14 and
# borg 1.2, into local repositories:
#  1. restic: fleece run NAME -- bash restic-fleece.sh (restic reads the
#     view through a pipe that only the script closes, and only after the
#     whole view was read), while the device is written: one snapshot,
#     restored, SHA-256 of the point in time;
#  2. borg: borg create --content-from-command ::ARCH -- fleece backup NAME
#     -o -, the same;
#  3. the view invalidated midway through each (the read fails): restic and
#     borg fail, and the repositories hold no new snapshot or archive.
# Without the recipes (the pipelines "fleece backup -o - | restic backup
# --stdin" and "... | borg create ::ARCH -"), 3 fails: the tools record the
# truncated stream (tests/results/2026-11-30-43-backup-tools-*-unfixed-*).
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
set -o errtrace	# lib.sh's ERR trap: also for a failure inside a function
# (not in the backups expected to fail: they run with "trap - ERR")
F=$(fleece_bin)
export FLEECE_STATE_DIR=$PWD/state
command -v restic > /dev/null || fail "no restic (tests/vm/deps.sh installs it)"
command -v borg > /dev/null || fail "no borg (tests/vm/deps.sh installs borgbackup)"
cli_fixture 8 32
fl=$(mkdev fl 8 1)
fl_table=$(dmsetup table fl)
# The recipes call "fleece": this test's copy.
mkdir bin
ln -s "$F" bin/fleece
export PATH=$PWD/bin:$PATH
export RESTIC_REPOSITORY=$PWD/restic-repo RESTIC_PASSWORD=fleece-test
export RESTIC_CACHE_DIR=$PWD/restic-cache
export BORG_REPO=$PWD/borg-repo BORG_BASE_DIR=$PWD/borg-base
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
restic init -q
borg init -e none
want=$(sha256sum < pat)

# fleece(8)'s restic recipe, verbatim: the CMD of "fleece run NAME --"
# (its arguments go to fleece read: this test slows the read down).
cat > restic-fleece.sh <<'EOF'
#!/bin/bash
# restic sees the end of its input only after the whole view was read:
# on a failed read or a signal it is interrupted first, and saves nothing.
set -u
exec 3> >(exec restic backup --stdin --stdin-filename "$FLEECE_NAME.img")
restic=$!
abort() { kill -INT "$restic"; wait "$restic"; exit 1; }
trap abort INT TERM HUP
fleece read -q -p none "$@" -o - "$FLEECE_VIEW" >&3 &
wait $! || abort
exec 3>&-
wait "$restic"
EOF
restic_backup() { # read options...
	fleece run --fleece-dev "$fl" data -- bash restic-fleece.sh "$@"
}
borg_backup() { # archive read options...
	local a=$1
	shift
	borg create --content-from-command --stdin-name data.img "::$a" -- \
		fleece backup -q -p none --fleece-dev "$fl" "$@" data -o -
}
snapshots() { restic snapshots --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'; }
archives() { borg list --short | wc -l; }

# Overwrites data (the first 2 MiB) once its view is there: after the
# point in time, while the backup reads.
writer() {
	local i
	for i in $(seq 1 600); do
		[ -b /dev/mapper/data-fleece-view ] && break
		sleep 0.1
	done
	[ -b /dev/mapper/data-fleece-view ] || { echo "writer: no view"; return 1; }
	dd if=/dev/urandom of="$data" bs=64k count=32 oflag=direct status=none
	echo "writer: wrote"
}
written() { # writer's log
	wait "$wpid" || { cat "$1"; fail "the writer failed"; }
	grep -q "writer: wrote" "$1" || fail "the writer did not write"
	! cmp -s <(dd if="$data" bs=1M iflag=direct status=none) pat || fail "data was not changed"
	put pat "$data"
}

step "1. restic: fleece run + restic-fleece.sh while data is written"
writer > w.log 2>&1 &
wpid=$!
restic_backup --rate 4M 2>&1 | tail -n 4
written w.log
assert_eq "$(snapshots)" 1 "restic snapshots"
restic restore -q latest --target restored
assert_eq "$(sha256sum < restored/data.img)" "$want" "SHA-256 of the restic restore"
rm -rf restored
as_before "restic"

step "2. borg: --content-from-command fleece backup while data is written"
writer > w.log 2>&1 &
wpid=$!
borg_backup a1 --rate 4M
written w.log
assert_eq "$(archives)" 1 "borg archives"
mkdir restored
(cd restored && borg extract ::a1)
assert_eq "$(sha256sum < restored/data.img)" "$want" "SHA-256 of the borg restore"
rm -rf restored
as_before "borg"

step "3. the view invalidated midway: restic and borg fail and record nothing"
# Once the reader has read from the view (its status counts reads from
# the origin), the fleece processes are stopped (SIGSTOP: the reader cannot
# race on meanwhile), the fleece device fails every write, and data is
# written: the copy-before-write fails, the view becomes invalid; then they
# go on, and their next read fails.
invalidate_midway() { # pid log
	local i pids
	for i in $(seq 1 1200); do
		[ -b /dev/mapper/data-fleece-view ] &&
			[ "$(dmsetup status data-fleece-view 2>/dev/null | awk '{ print $4 }')" -gt 0 ] && break
		alive "$1" || { cat "$2"; fail "the backup ended before it read"; }
		sleep 0.1
	done
	pids=$(pgrep -x fleece) || { cat "$2"; fail "no fleece process to hold"; }
	kill -STOP $pids
	dmsetup load fl --table "0 $(sectors "$fl") error"
	dmsetup suspend fl
	dmsetup resume fl
	dd if=/dev/zero of="$data" bs=64k count=1 seek=127 oflag=direct status=none
	kill -CONT $pids
	alive "$1" || { cat "$2"; fail "the backup ended before the view was invalidated"; }
}
# The reader said where its read failed ("at" a read, "before" the end of a
# discarded range): before the end.
failed_midway() { # log what
	local at
	at=$(sed -n 's/.*the view became invalid \(at\|before\) \([0-9]*\) bytes.*/\2/p' "$1" | head -n 1)
	[ -n "$at" ] && [ "$at" -lt $((8 << 20)) ] || bad+=("$2: the read did not fail midway (at '$at')")
	echo "$2: the read failed at $at bytes"
}
alive() { local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
fl_back() {
	dmsetup load fl --table "$fl_table"
	dmsetup suspend fl
	dmsetup resume fl
	put pat "$data"
}
bad=()
(trap - ERR; restic_backup --rate 1M --block-size 256K) > r.log 2>&1 &
pid=$!
invalidate_midway $pid r.log
rc=0; wait $pid || rc=$?
cat r.log
failed_midway r.log restic
[ "$rc" != 0 ] || bad+=("restic: fleece run exited 0 after the view was invalidated")
grep -q "the view became invalid while 'bash' ran" r.log || bad+=("restic: the invalidation was not reported")
n=$(snapshots)
[ "$n" = 1 ] || bad+=("restic: $((n - 1)) snapshot(s) recorded from a failed read: $(restic snapshots 2>&1 | tail -n 4)")
fl_back
as_before "restic, view invalidated"

(trap - ERR; borg_backup a2 --rate 1M --block-size 256K) > b.log 2>&1 &
pid=$!
invalidate_midway $pid b.log
rc=0; wait $pid || rc=$?
cat b.log
failed_midway b.log borg
[ "$rc" != 0 ] || bad+=("borg: borg create exited 0 after the view was invalidated")
grep -q "the view became invalid" b.log || bad+=("borg: fleece's message on the invalidation is not there")
n=$(archives)
[ "$n" = 1 ] || bad+=("borg: $((n - 1)) archive(s) recorded from a failed read: $(borg list 2>&1)")
fl_back
as_before "borg, view invalidated"
[ ${#bad[@]} = 0 ] || fail "$(printf '%s\n' "${bad[@]}")"
umount /mnt/fdir
step "ok"
