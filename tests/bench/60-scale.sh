#!/bin/bash
# Benchmark 6, scale: a 16 TiB sparse origin, and 64 fleeces at once.
#
# 16 TiB: origin and fleece device are two thin volumes of 16 TiB
# (2^35 sectors) in one dm-thin pool (64 KiB blocks, skip_block_zeroing)
# whose data device is ram2 (1 GiB) and metadata a 64 MiB slice of ram3.
# A thin volume, not a linear region followed by dm "zero": writes can
# land anywhere in the 16 TiB and read back (a "zero" target drops them),
# so the copies and the backup of chunks spread over the whole device can
# be checked byte for byte; a thin LV is also what the admin guide names
# as the fleece device.  For 4 KiB and 64 KiB chunks (4 Gi and 256 Mi
# chunks), each round, the chunk sizes in a rotated order:
#   - old data: K = 2048 blocks of 64 KiB, one in each 8 GiB stretch of the
#     origin (at a random 64 KiB-aligned place in it), written before the
#     point in time;
#   - constructor: "dmsetup create --notable" then "dmsetup load" (the
#     target's constructor runs in the load) and "dmsetup resume" (the
#     point in time), each timed with bash's $EPOCHREALTIME, for a
#     dm-linear of 16 TiB over the origin (the baseline: what a process
#     start, the ioctl and udev cost), the fleece table and its view;
#   - kernel memory: /proc/meminfo before and after each table, settled and
#     caches dropped as in 50-memory (report: SUnreclaim + VmallocUsed);
#   - status: $NSTATUS calls of "dmsetup status" on the fleece and on the
#     linear, alternating, each timed;
#   - first touch: one 4 KiB O_DIRECT write (QD1) into each of the K blocks
#     (at 4 KiB * (k mod 16) in it), in a shuffled order, through the
#     fleece target: K copies; then the same writes again (second touch,
#     no copy: the baseline); latency per write;
#   - backup: the K blocks of 64 KiB read through the view (at 4 KiB chunks
#     one copied chunk and 15 pending ones each), compared byte for byte
#     with the old data, timed; the same blocks read from the thin origin
#     below (the baseline; only the reads are timed, not the comparisons); the origin's blocks compared with the old data
#     with the new 4 KiB over it; the fleece status: K copies, no error.
# If the 16 TiB table is refused, the error is recorded with the kernel
# log, and the size is halved until a table is accepted.
#
# 64 pairs (first: the cheaper part): 128 dm "zero" devices of 1 GiB (64 origins, 64 fleece
# devices); in each round ($PAIR_ROUNDS), one "dmsetup create --concise" makes 64 linear
# tables (baseline), one makes 64 fleece tables (64 KiB chunks), one their
# 64 views: wall time and kernel memory of each, per pair in the report.
#
# Under TCG every time here is 10 to 50 times what real hardware takes;
# under the instruction-counted clock (make bench's default) a time is the
# guest's work, with a process start over 9p included in every dmsetup
# call: compare with the baselines of the same run, not with hardware.
[[ " $(</proc/cmdline) " == *" fleece_test_guest=1 "* ]] || { echo "${0##*/}: not in the dm-fleece test VM (fleece_test_guest=1 missing from /proc/cmdline): refusing to run; use make check" >&2; exit 1; }
. "$SRC/tests/lib.sh" || exit 1
. "$SRC/tests/bench/bench.lib"

# Two rounds of the 16 TiB cases and one of the 64 pairs, not bench.lib's
# three: a round takes minutes under TCG.
ROUNDS=2
PAIR_ROUNDS=1
SIZE=$((1 << 35))	# 16 TiB in sectors
K=2048			# blocks written and backed up
NSTATUS=20
NPAIRS=64
GIB=$((1 << 21))

us() { echo "${EPOCHREALTIME/./}"; }

# create_timed NAME TABLE: create, load, resume, each timed; sets T_LOAD,
# T_RESUME (microseconds); the load's error output in load.err.
create_timed() {
	local t0 t1 t2
	dmsetup create --notable "$1"
	t0=$(us)
	if ! dmsetup load "$1" --table "$2" 2> load.err; then
		dmsetup remove "$1"
		return 1
	fi
	t1=$(us)
	dmsetup resume "$1"
	t2=$(us)
	T_LOAD=$((t1 - t0)) T_RESUME=$((t2 - t1))
}

# --- the thin pool -------------------------------------------------------
dmsetup create tmeta --table "0 131072 linear /dev/ram3 0"
dd if=/dev/zero of=/dev/mapper/tmeta bs=4k count=1 oflag=direct status=none
dmsetup create pool --table "0 $(blockdev --getsz "$D2") thin-pool /dev/mapper/tmeta $D2 128 0 1 skip_block_zeroing"
thin_create() { # id name sectors
	dmsetup message pool 0 "create_thin $1"
	dmsetup create "$2" --table "0 $3 thin /dev/mapper/pool $1"
}
thin_delete() { # id name
	dm_remove "$2"
	dmsetup message pool 0 "delete $1"
}

# The writer and reader: scale-io.py MODE ... (one process start per phase)
cat > scale-io.py <<'EOF'
import json, mmap, os, random, subprocess, sys, time

mode, dev, size, k, seed = sys.argv[1:6]
SIZE, K, SEED = int(size) * 512, int(k), int(seed)
BLK, W = 65536, 4096
stride = SIZE // K
rng = random.Random(SEED)
pos = [i * stride + rng.randrange(stride // BLK) * BLK for i in range(K)]
old = random.Random(SEED + 1).randbytes(K * BLK)
new = random.Random(SEED + 2).randbytes(K * W)
woff = [p + W * (i % 16) for i, p in enumerate(pos)]

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]

if mode == "prewrite":
    buf = mmap.mmap(-1, BLK)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    for i, p in enumerate(pos):
        buf[:] = old[i * BLK:(i + 1) * BLK]
        assert os.pwritev(fd, [buf], p) == BLK
    os.fsync(fd)
else:
    # mode "run": dev is the fleece target; then its name, the view and the
    # raw origin below.  First and second touch, then the backup read.
    name, view, raw = sys.argv[6:9]
    buf = mmap.mmap(-1, W)
    order = list(range(K))
    random.Random(SEED + 3).shuffle(order)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    res = {}
    for touch in ("firsttouch", "secondtouch"):
        lat = []
        for i in order:
            buf[:] = new[i * W:(i + 1) * W]
            a = time.monotonic()
            if os.pwritev(fd, [buf], woff[i]) != W:
                sys.exit(f"short write at {woff[i]}")
            lat.append((time.monotonic() - a) * 1e6)
        dt = sum(lat) / 1e6
        res[touch] = {"writes": K, "s": dt, "iops": K / dt, "mean_us": sum(lat) / K,
                      "p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "max_us": max(lat)}
        if touch == "firsttouch":
            # Every copy ended: the status counts are final.
            for _ in range(3000):
                st = subprocess.run(["dmsetup", "status", name], capture_output=True,
                                    text=True, check=True).stdout.split()
                if st[11] == "0":
                    break
                time.sleep(0.01)
            res["status_after_firsttouch"] = " ".join(st)
    os.close(fd)
    buf = mmap.mmap(-1, BLK)
    for what, path, want in (("view", view, "old"), ("raw", raw, "new"), ("origin", dev, "new")):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        dt = 0.0
        for i, p in enumerate(pos):
            t0 = time.monotonic()
            if os.preadv(fd, [buf], p) != BLK:
                sys.exit(f"{what}: short read at {p}")
            dt += time.monotonic() - t0
            exp = bytearray(old[i * BLK:(i + 1) * BLK])
            if want == "new":
                o = W * (i % 16)
                exp[o:o + W] = new[i * W:(i + 1) * W]
            if buf[:] != exp:
                j = next(j for j in range(BLK) if buf[j] != exp[j])
                sys.exit(f"{what} {path}: block {i} at byte {p} differs from the "
                         f"{'point-in-time' if want == 'old' else 'new'} data at byte {p + j}")
        os.close(fd)
        res[what] = {"s": dt, "MBps": K * BLK / dt / 1e6}
    res["bytes"] = K * BLK
    print(json.dumps(res))
EOF

# --- 64 pairs ------------------------------------------------------------
spec=""
for ((i = 0; i < NPAIRS; i++)); do
	spec+="zo$i,,,rw,0 $GIB zero;zs$i,,,rw,0 $GIB zero;"
done
dmsetup create --concise "${spec%;}"
pairs_spec() { # kind
	local i s=""
	for ((i = 0; i < NPAIRS; i++)); do
		case $1 in
		linear) s+="l$i,,,rw,0 $GIB linear /dev/mapper/zo$i 0;" ;;
		fleece) s+="f$i,,,rw,0 $GIB fleece /dev/mapper/zo$i /dev/mapper/zs$i 128;" ;;
		view) s+="v$i,,,rw,0 $GIB fleece-view /dev/mapper/zo$i /dev/mapper/zs$i;" ;;
		esac
	done
	echo "${s%;}"
}
names() { local i; for ((i = 0; i < NPAIRS; i++)); do echo "$1$i"; done; }
for round in $(seq 1 "$PAIR_ROUNDS"); do
	for kind in linear fleece view; do
		[ $kind = view ] || settle
		[ $kind = view ] || before=$(meminfo)
		spec=$(pairs_spec $kind)
		t0=$(us)
		dmsetup create --concise "$spec"
		t1=$(us)
		settle
		after=$(meminfo)
		record "pairs64-$kind" static "$round" chunks=0 "before=$before" "after=$after" "pairs=$NPAIRS"
		record "pairs64-$kind" ctr "$round" "create_us=$((t1 - t0))" "pairs=$NPAIRS"
		log "round $round: $NPAIRS $kind tables: $((t1 - t0)) us"
		before=$after
		if [ $kind = linear ]; then
			udevadm settle --timeout=30
			# shellcheck disable=SC2046
			dmsetup remove --retry $(names l)
		fi
	done
	udevadm settle --timeout=30
	# shellcheck disable=SC2046
	dmsetup remove --retry $(names v) $(names f)
done

# --- 16 TiB --------------------------------------------------------------
big_round() { # round chunk_sectors
	local r=$1 c=$2 case=$3 size=$SIZE before after afterv json
	thin_create 1 torig "$size"
	thin_create 2 tfl "$size"
	python3 scale-io.py prewrite /dev/mapper/torig "$size" $K $((r * 10 + c))

	settle
	before=$(meminfo)
	create_timed lin "0 $size linear /dev/mapper/torig 0"
	settle
	after=$(meminfo)
	record linear-16t static "$r" chunks=0 "before=$before" "after=$after"
	record linear-16t ctr "$r" "load_us=$T_LOAD" "resume_us=$T_RESUME"

	settle
	before=$(meminfo)
	while ! create_timed fl "0 $size fleece /dev/mapper/torig /dev/mapper/tfl $c"; do
		log "round $r: $case: fleece of $size sectors refused: $(cat load.err)"
		record "$case" refused "$r" "sectors=$size" "error=$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))' < load.err)" \
			"dmesg=$(dmesg | tail -n 3 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')"
		size=$((size / 2))
		[ "$size" -ge $GIB ] || fail "no fleece table of 1 GiB or more accepted"
	done
	settle
	after=$(meminfo)
	local vm=$RAWREL/$case.r$r.vmallocinfo
	grep -a 'dm_fleece' /proc/vmallocinfo > "$OUT/$vm" || true
	record "$case" static "$r" "chunks=$(status_field fl 1)" "before=$before" \
		"after=$after" "vmallocinfo=\"$vm\"" "sectors=$size"
	record "$case" ctr "$r" "load_us=$T_LOAD" "resume_us=$T_RESUME" "sectors=$size"
	log "round $r: $case: fleece load ${T_LOAD} us, resume ${T_RESUME} us: $(dmsetup status fl)"

	create_timed flv "0 $size fleece-view /dev/mapper/torig /dev/mapper/tfl"
	settle
	afterv=$(meminfo)
	record "$case-view" static "$r" chunks=0 "before=$after" "after=$afterv"
	record "$case-view" ctr "$r" "load_us=$T_LOAD" "resume_us=$T_RESUME"

	# Alternating, so that whatever else runs in the guest meanwhile (udev
	# after the creates) weighs on both alike.
	local t0 t1 i tf=0 tl=0
	udevadm settle --timeout=30
	for ((i = 0; i < NSTATUS; i++)); do
		t0=$(us)
		dmsetup status fl > /dev/null
		t1=$(us)
		dmsetup status lin > /dev/null
		tf=$((tf + t1 - t0)) tl=$((tl + $(us) - t1))
	done
	record "$case" status "$r" "calls=$NSTATUS" "fleece_us=$tf" "linear_us=$tl"
	log "round $r: $case: $NSTATUS status calls: fleece $tf us, linear $tl us"

	# First touch, second touch, backup read: one process (its start and
	# its data cost much under TCG).
	python3 scale-io.py run /dev/mapper/fl "$size" $K $((r * 10 + c)) \
		fl /dev/mapper/flv /dev/mapper/torig > run.json || fail "$case: $(cat run.json)"
	json=$(<run.json)
	log "round $r: $case: $json; view $(dmsetup status flv)"
	record "$case" run "$r" "extra=$json" "view=\"$(dmsetup status flv)\""
	read -r _ _ _ _ _ _ copied released cbw errors state _ <<< "$(sed 's/.*"status_after_firsttouch": "\([^"]*\)".*/\1/' run.json)"
	assert_eq "$copied $released $cbw $errors $state" "$K 0 $K 0 active" \
		"$case: copied released cbw errors state after $K first-touch writes"
	read -r _ copied released cbw errors state <<< "$(fleece_counts fl)"
	assert_eq "$copied $released $cbw $errors $state" "$K 0 $K 0 active" \
		"$case: copied released cbw errors state after the second touch and the backup"
	dm_remove flv fl lin
	thin_delete 1 torig
	thin_delete 2 tfl
}

for round in $(seq 1 "$ROUNDS"); do
	for c in $(rotate "$round" 8 128); do
		big_round "$round" "$c" "fleece-16t-$((c / 2))k"
	done
done
