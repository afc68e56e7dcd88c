#!/usr/bin/python3
"""Host side of `make bench`: records -> table, JSON and latency plot.

usage: report.py [--save DIR] RESULTS_DIR [RESULTS_DIR...]

Reads RESULTS_DIR/records.jsonl (written in the guest by tests/bench/*.sh;
each record points at raw output under RESULTS_DIR/raw: fio JSON, the
reader's summary, /proc/meminfo snapshots) and writes, in the same folder:
  bench.txt     the table (also printed on stdout)
  bench.json    per case median/min/max, the ratios, each goal's verdict, and
                every raw record
  latency.png   latency percentiles per case (needs python3-matplotlib)
With --save DIR (make bench: tests/bench/results), the table and the plot
are also copied there as the run's evidence file, named by date, kernel,
storage, clock, groups and commit (FLEECE_COMMIT, from make bench), e.g.
2026-11-30-6.1-brd-icount-groups-10-30-40-95d99c6.txt, and its name is
printed: the README cites such files for each claim.

Every figure is the median over the interleaved rounds, with [min..max].
A ratio is computed per round (case / baseline of the same round), then
its median and range are taken: the rounds are paired, not pooled.
"""
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict

PCTS = ["1.0", "5.0", "10.0", "25.0", "50.0", "75.0", "90.0", "95.0", "99.0", "99.9"]


_fio_cache = {}


def load_fio(path):
    if path not in _fio_cache:
        with open(path) as f:
            text = f.read()
        # fio may print warnings before the JSON document.
        _fio_cache[path] = json.loads(text[text.index("{"):])
    return _fio_cache[path]


def normalize(rec, d):
    """Derive the figures of a record from the raw output it points at."""
    if rec.get("fio"):
        doc = load_fio(os.path.join(d, rec["fio"]))
        jobs = doc["jobs"]
        if rec.get("job"):
            jobs = [j for j in jobs if j["jobname"] == rec["job"]]
            if not jobs:
                raise SystemExit(f"report: {rec['fio']}: no job {rec['job']}")
        job = jobs[0]
        side = next((x for x in ("write", "read", "trim") if job[x]["total_ios"] > 0), None)
        if side is None:
            raise SystemExit(f"report: {rec['fio']} {rec.get('job')}: no I/O")
        st = job[side]
        lat = st.get("lat_ns", {})
        pct = lat.get("percentile") or st.get("clat_ns", {}).get("percentile", {})
        rec.update({
            "dir": side, "iops": st["iops"], "bw_MBps": st["bw_bytes"] / 1e6,
            "ios": st["total_ios"], "runtime_ms": st["runtime"],
            "lat_mean_us": lat.get("mean", 0) / 1000.0,
            "lat_pct_us": {str(float(k)): v / 1000.0 for k, v in pct.items()},
            "fio_error": job.get("error", 0),
        })
    if "reader" in rec:
        rec["bw_MBps"] = rec["reader"]["MBps"]
    if "before" in rec and "after" in rec:
        b, a = rec["before"], rec["after"]
        delta = {k: (a[k] - b[k]) * 1024 for k in a}
        rec["delta_bytes"] = delta
        rec["slab_vmalloc_bytes"] = delta["SUnreclaim"] + delta["VmallocUsed"]
        rec["slab_all_vmalloc_bytes"] = delta["Slab"] + delta["VmallocUsed"]
        rec["memfree_drop_bytes"] = -delta["MemFree"]
    if rec.get("vmallocinfo"):
        with open(os.path.join(d, rec["vmallocinfo"])) as f:
            lines = [l.strip() for l in f if l.strip()]
        rec["vmallocinfo_lines"] = lines
        rec["vmallocinfo_bytes"] = sum(int(l.split()[1]) for l in lines)
    disk_ios = (rec.get("extra") or {}).get("disk_ios")
    if isinstance(disk_ios, int) and rec.get("runtime_ms"):
        rec["disk_iops"] = disk_ios / (rec["runtime_ms"] / 1000.0)
    samples = (rec.get("extra") or {}).get("memfree_samples")
    if samples:
        # MemFree in kB, one sample per line; "start" marks fio's start:
        # the baseline is the median of the samples before it.
        pre, post, seen = [], [], False
        with open(os.path.join(d, samples)) as f:
            for x in f:
                x = x.strip()
                if x == "start":
                    seen = True
                elif x.isdigit():
                    (post if seen else pre).append(int(x))
        if pre and post:
            rec["peak_inflight_bytes"] = (statistics.median(pre) - min(post)) * 1024
        rec["memfree_samples_n"] = [len(pre), len(post)]
    if "t0" in rec and "t1" in rec:
        rec["secs"] = rec["t1"] - rec["t0"]
    if rec.get("samples"):
        # The fleece during a backup (71-incremental): one line every 0.1 s,
        # "chunks_copied st_blocks" ("-" before the fleece exists).
        copied, blocks = [], []
        with open(os.path.join(d, rec["samples"])) as f:
            for x in f:
                a = x.split()
                if len(a) == 2:
                    if a[0].isdigit():
                        copied.append(int(a[0]))
                    if a[1].isdigit():
                        blocks.append(int(a[1]))
        rec["samples_n"] = len(copied)
        rec["peak_copied_bytes"] = max(copied, default=0) * rec.get("fleece_chunk_bytes", 65536)
        rec["peak_file_bytes"] = max(blocks, default=0) * 512
    if rec.get("err") and os.path.exists(os.path.join(d, rec["err"])):
        with open(os.path.join(d, rec["err"])) as f:
            rec["summary"] = [l.strip() for l in f if "complete" in l]
        # The tool's own read phase: "... in 0.7s," or "in 0:35 (" (m:ss).
        for x in rec["summary"]:
            m = re.search(r" in ([0-9.]+)s[ ,]| in ([0-9]+(?::[0-9]+)+)[ ,]", x)
            if m and m.group(1):
                rec["tool_secs"] = float(m.group(1))
            elif m:
                secs = 0.0
                for part in m.group(2).split(":"):
                    secs = secs * 60 + float(part)
                rec["tool_secs"] = secs
    if rec.get("writer"):
        try:
            job = load_fio(os.path.join(d, rec["writer"]))["jobs"][0]["write"]
            rec["writer_ios"], rec["writer_iops"] = job["total_ios"], job["iops"]
        except (OSError, ValueError, KeyError, IndexError):
            rec["writer_ios"] = None
    return rec


def read_note(d, name, default):
    """A one-line file the guest wrote about the run (storage, vcpus, clock)."""
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return f.read().strip()


def stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values)}


def fmt(s, unit="", nd=0):
    if s is None:
        return "-"
    f = f"{{:.{nd}f}}"
    return f"{f.format(s['median'])}{unit} [{f.format(s['min'])}..{f.format(s['max'])}]"


def get(rec, path):
    cur = rec
    for p in path.split("/"):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


class Results:
    def __init__(self, records):
        self.records = records
        # (group, workload, case) -> {round: record}
        self.by = defaultdict(dict)
        for r in records:
            self.by[(r["group"], r["workload"], r["case"])][r["round"]] = r

    def values(self, g, w, c, path):
        return [get(r, path) for _, r in sorted(self.by.get((g, w, c), {}).items())]

    def s(self, g, w, c, path):
        return stat(self.values(g, w, c, path))

    def ratio(self, g, w, c, base, path="iops", base_w=None, base_path=None):
        num = self.by.get((g, w, c), {})
        den = self.by.get((g, base_w or w, base), {})
        rs = []
        for rnd in sorted(set(num) & set(den)):
            a, b = get(num[rnd], path), get(den[rnd], base_path or path)
            if a is not None and b:
                rs.append(a / b)
        return stat(rs)

    def cases(self, g, w):
        seen = []
        for (gg, ww, c) in self.by:
            if gg == g and ww == w and c not in seen:
                seen.append(c)
        return seen

    def workloads(self, g):
        seen = []
        for (gg, ww, _) in self.by:
            if gg == g and ww not in seen:
                seen.append(ww)
        return seen


def mib(s):
    """A stat of bytes (median, min, max) in MiB; None stays None."""
    return s and {k: s[k] / 2**20 for k in ("median", "min", "max")}


def goal(out, name, value, target, better="higher", detail=""):
    """One goal line; value is a stat of the ratio (or amount)."""
    if value is None:
        met = None
    elif better == "higher":
        met = value["median"] >= target
    else:
        met = value["median"] <= target
    out.append({"goal": name, "value": value, "target": target,
                "better": better, "met": met, "detail": detail})


def build(res):
    cases_out = []
    for (g, w, c), rounds in res.by.items():
        entry = {"group": g, "workload": w, "case": c, "rounds": sorted(rounds)}
        for path in ("iops", "bw_MBps", "lat_mean_us"):
            st = res.s(g, w, c, path)
            if st:
                entry[path] = st
        lat = {}
        for p in PCTS:
            st = res.s(g, w, c, "lat_pct_us/" + p)
            if st:
                lat[p] = st
        if lat:
            entry["lat_pct_us"] = lat
        for path in ("slab_vmalloc_bytes", "slab_all_vmalloc_bytes", "memfree_drop_bytes",
                     "vmallocinfo_bytes", "chunks", "peak_inflight_bytes",
                     "extra/cbw_count", "extra/fleece/cbw_count", "extra/fleece/released",
                     "extra/fleece_at_end/cbw_count", "extra/fleece_at_end/released"):
            st = res.s(g, w, c, path)
            if st:
                entry[path] = st
        cases_out.append(entry)

    ratios = []
    goals = []

    def add_ratio(name, g, w, c, base, path="iops", base_w=None):
        st = res.ratio(g, w, c, base, path, base_w)
        ratios.append({"name": name, "group": g, "workload": w, "case": c,
                       "baseline": base, "metric": path, "ratio": st})
        return st

    # 1. Fast path
    fp = "10-fastpath"
    for w in res.workloads(fp):
        for c in res.cases(fp, w):
            if c != "linear":
                st = add_ratio(f"{c} / linear ({w})", fp, w, c, "linear")
                if c.startswith("fleece"):
                    goal(goals, f"fast path {w}: {c} / dm-linear IOPS", st, 0.97)

    # 2. First touch
    ft = "20-firsttouch"
    for w in res.workloads(ft):
        for cs in ("64k", "1m"):
            fl = f"fleece-{cs}"
            if (ft, w, fl) not in res.by:
                continue
            for snap in ("snap-N", "snap-P"):
                st = add_ratio(f"{fl} / {snap}-{cs} ({w})", ft, w, fl, f"{snap}-{cs}")
                p99f = res.s(ft, w, fl, "lat_pct_us/99.0")
                p99s = res.s(ft, w, f"{snap}-{cs}", "lat_pct_us/99.0")
                p99r = res.ratio(ft, w, fl, f"{snap}-{cs}", "lat_pct_us/99.0")
                ratios.append({"name": f"{fl} / {snap}-{cs} p99 latency ({w})",
                               "group": ft, "workload": w, "case": fl,
                               "baseline": f"{snap}-{cs}", "metric": "lat_pct_us/99.0",
                               "ratio": p99r})
                if snap == "snap-N":
                    dio = {c: res.s(ft, w, c, "disk_iops") for c in (fl, f"{snap}-{cs}")}
                    goal(goals, f"first touch {cs}: fleece / dm-snapshot N IOPS", st, 1.5,
                         detail="disk requests/s: " + ", ".join(
                             f"{c} {fmt(v)}" for c, v in dio.items())
                         if all(dio.values()) else "")
                    goal(goals, f"first touch {cs}: fleece p99 / dm-snapshot N p99 (lower)",
                         p99r, 1.0, better="lower",
                         detail=f"fleece p99 {fmt(p99f, ' us')}, snap-N p99 {fmt(p99s, ' us')}")

    # 3. Writers during a backup
    bk = "30-backup-writers"
    for w in res.workloads(bk):
        st = add_ratio(f"backup-10MBps / backup-unlimited ({w})", bk, w,
                       "backup-10MBps", "backup-unlimited")
        add_ratio(f"no-backup / backup-unlimited ({w})", bk, w, "no-backup", "backup-unlimited")
        add_ratio(f"backup-10MBps / no-backup ({w})", bk, w, "backup-10MBps", "no-backup")
        cbw = {c: res.s(bk, w, c, "extra/backup_copies") for c in
               ("backup-10MBps", "backup-unlimited")}
        cbw["no-backup"] = res.s(bk, w, "no-backup", "extra/fleece_at_end/cbw_count")
        goal(goals, f"writers during a backup ({w}): 10 MB/s target / unthrottled target IOPS", st, 0.9,
             detail="copies in the window (the backup's summary; no-backup: cbw_count): " +
             ", ".join(f"{c} {fmt(v)}" for c, v in cbw.items()))
        if (bk, w, "view-read-10MBps") in res.by:
            st = add_ratio(f"view-read-10MBps / view-read-unlimited ({w}, module alone)", bk, w,
                           "view-read-10MBps", "view-read-unlimited")
            add_ratio(f"linear-on-base / bare ({w}: the layer a hidden origin adds)", bk, w,
                      "linear-on-base", "bare")
            cbw = {c: res.s(bk, w, c, "extra/backup_copies") for c in
                   ("view-read-10MBps", "view-read-unlimited")}
            goal(goals, f"writers during a view read ({w}), module alone: 10 MB/s / unthrottled IOPS",
                 st, 0.9, detail="copies in the window: " +
                 ", ".join(f"{c} {fmt(v)}" for c, v in cbw.items()))

    # 4. Backup read
    rd = "40-backup-read"
    for c in res.cases(rd, "read-1m-qd1"):
        if c != "raw-origin":
            st = add_ratio(f"{c} / raw-origin (read-1m-qd1)", rd, "read-1m-qd1", c,
                           "raw-origin", "bw_MBps")
            if c.startswith("view"):
                goal(goals, f"backup read (fio, 1 MiB O_DIRECT): {c} / raw origin MB/s", st, 0.9)
    if (rd, "read-1m-whole", "view-64k-backup") in res.by:
        st = add_ratio("view-64k-backup / raw-origin-reader (read-1m-whole)", rd,
                       "read-1m-whole", "view-64k-backup", "raw-origin-reader", "bw_MBps")
        tools = sorted({str(get(r, "reader/tool") or "?") for r in res.records
                        if r["group"] == rd and r["workload"] == "read-1m-whole"})
        goal(goals, "backup read, whole device: view with discards / raw origin MB/s", st, 0.9,
             detail="readers: " + ", ".join(tools))

    # 7. Change tracking: marked chunks, and the first write per chunk per epoch
    tk = "70-track"
    for w in res.workloads(tk):
        if (tk, w, "track") not in res.by:
            continue
        st = add_ratio(f"track / linear ({w})", tk, w, "track", "linear")
        p99r = res.ratio(tk, w, "track", "linear", "lat_pct_us/99.0")
        ratios.append({"name": f"track / linear p99 latency ({w})", "group": tk,
                       "workload": w, "case": "track", "baseline": "linear",
                       "metric": "lat_pct_us/99.0", "ratio": p99r})
        detail = (f"p99 track {fmt(res.s(tk, w, 'track', 'lat_pct_us/99.0'), ' us')}, "
                  f"linear {fmt(res.s(tk, w, 'linear', 'lat_pct_us/99.0'), ' us')}")
        if w.startswith("marked-"):
            goal(goals, f"tracking, marked chunks {w}: fleece-track / dm-linear IOPS", st, 0.99,
                 detail=detail)
        else:
            commits = res.s(tk, w, "track", "extra/commits_during")
            goal(goals, f"tracking, first write per chunk per epoch {w}: fleece-track / dm-linear IOPS",
                 st, 0.9, detail=detail + f", store commits per run {fmt(commits)}")

    # 5. Memory
    mem = "50-memory"
    memory = {}
    if (mem, "static", "fleece-1t") in res.by:
        t, g1, lin, t4 = (res.by.get((mem, "static", c), {}) for c in
                          ("fleece-1t", "fleece-1g", "linear-1t", "fleece-1t-4k"))
        slopes, slopes4, module, totals, drops, fixed = [], [], [], [], [], []
        for rnd in sorted(t):
            a = t[rnd]
            totals.append(a["slab_vmalloc_bytes"])
            drops.append(a["memfree_drop_bytes"])
            fixed.append(a["slab_vmalloc_bytes"] - a["chunks"] * 2 / 8)
            if rnd in g1:
                b = g1[rnd]
                slopes.append(8.0 * (a["slab_vmalloc_bytes"] - b["slab_vmalloc_bytes"]) /
                              (a["chunks"] - b["chunks"]))
            if rnd in t4:
                b = t4[rnd]
                slopes4.append(8.0 * (b["slab_vmalloc_bytes"] - a["slab_vmalloc_bytes"]) /
                               (b["chunks"] - a["chunks"]))
            if rnd in lin:
                module.append(a["slab_vmalloc_bytes"] - lin[rnd]["slab_vmalloc_bytes"])
        memory = {
            "chunks": t[min(t)]["chunks"],
            "fleece_1t_slab_vmalloc_bytes": stat(totals),
            "fleece_1t_memfree_drop_bytes": stat(drops),
            "fleece_1t_minus_linear_slab_vmalloc_bytes": stat(module),
            "fleece_1t_beyond_2_bits_per_chunk_bytes": stat(fixed),
            "bits_per_chunk_slope_1t_vs_1g": stat(slopes),
            "bits_per_chunk_slope_4k_vs_64k_chunks": stat(slopes4),
            "vmallocinfo": t[min(t)].get("vmallocinfo_lines"),
            "vmallocinfo_4k_chunks": t4[min(t4)].get("vmallocinfo_lines") if t4 else None,
        }
        # In-flight: MemFree drop under CBW load, minus the same fio on a
        # dm-linear (fio's own memory), round by round.
        w = "randwrite-4k-qd256"
        lin = res.by.get((mem, w, "inflight-linear-qd256"), {})
        per = {}
        for k in ("inflight-64k-qd256", "inflight-1m-qd256"):
            vals = []
            for rnd, r in sorted(res.by.get((mem, w, k), {}).items()):
                base = get(lin.get(rnd, {}), "peak_inflight_bytes") or 0
                if r.get("peak_inflight_bytes") is not None:
                    vals.append(r["peak_inflight_bytes"] - base)
            per[k] = stat(vals)
        per["inflight-linear-qd256 (fio itself, subtracted)"] = res.s(
            mem, w, "inflight-linear-qd256", "peak_inflight_bytes")
        memory["peak_inflight_net_bytes"] = per
        # The slope between 4 KiB and 64 KiB chunks on 1 TiB: 252 Mi chunks
        # apart, so that the guest's unrelated slab activity (tens of KiB)
        # weighs less than 0.001 bit; 0.5% tolerance.  Without that case,
        # the slope between 1 TiB and 1 GiB (noisier, 1% tolerance).
        if slopes4:
            goal(goals, "memory: state bits per chunk (slope 4 KiB vs 64 KiB chunks on 1 TiB, SUnreclaim+vmalloc; 0.5% tolerance)",
                 stat(slopes4), 2.01, better="lower",
                 detail="fleece 1 TiB at 64 KiB chunks: " +
                 fmt(stat([x / 2**20 for x in totals]), " MiB", 2) + " in all, of which " +
                 fmt(stat([x / 2**10 for x in fixed]), " KiB", 0) + " beyond 2 bits per chunk")
        goal(goals, "memory: state bits per chunk (slope 1 TiB vs 1 GiB at 64 KiB, SUnreclaim+vmalloc; 1% tolerance)",
             stat(slopes), 2.02, better="lower",
             detail="net in-flight peaks (MemFree drop under iodepth-256 CBW load, minus fio on dm-linear): " +
             ", ".join(f"{k} {fmt(mib(v), ' MiB', 1)}"
                       for k, v in per.items() if "linear" not in k))
        # The copies' memory is bounded (dm-fleece-cbw.c: FLEECE_COPY_BYTES,
        # 64 MiB of buffers in flight, plus up to 8 MiB kept idle): under 256
        # concurrent first touches an unbounded 1 MiB case would take 256 MiB.
        for k in ("inflight-64k-qd256", "inflight-1m-qd256"):
            v = per.get(k)
            goal(goals, f"memory: copies in flight, {k} (net MemFree drop, MiB; bound 64 + 8 idle)",
                 mib(v), 72, better="lower")
    # 7b. Incremental backups: time against a full backup of the same state.
    for w in res.workloads(INCR):
        if not w.startswith("changed-"):
            continue
        pct = int(w.split("-")[1].removesuffix("pct"))
        st = add_ratio(f"incremental / full backup time ({w})", INCR, w, "incremental", "full", "secs")
        target = 0.05 if pct == 1 else pct / 100
        detail = f"ratio / {pct / 100:.2f}: {fmt(st and {k: st[k] / (pct / 100) for k in ('median', 'min', 'max')}, '', 2)}"
        if res.by.get((INCR, w, "device")):
            # The same reads by fio on the disk, with nothing of ours in
            # the way: the least this machine allows (device_reads).
            dev = add_ratio(f"device: fio's replay of the same reads / full backup time ({w})",
                            INCR, w, "device", "full", "secs")
            over = add_ratio(f"incremental / fio's replay of the same reads ({w})",
                             INCR, w, "incremental", "device", "secs")
            detail += (f"; the device's floor (fio, the same reads on the disk, no dm-fleece) / full: "
                       f"{fmt(dev, '', 3)}, incremental / that floor: {fmt(over, '', 2)}")
        goal(goals, f"incremental backup, {pct}% of the chunks changed: time / a full backup's"
             + (" (the strict reading: at most the fraction)" if pct != 1 else ""), st, target, better="lower",
             detail=detail)
    # The first clause, "time in proportion to the changed data":
    # what an incremental takes above its fixed cost (the unchanged case's
    # time in the same round), per changed chunk, at 10% against at 1%.  At
    # most 1 (10% allowed for noise): ten times the changed chunks cost no
    # more than ten times the time.  The line above is the stricter reading
    # (per byte as fast as a full backup's sequential read), kept as it is.
    cost = {}
    for w in ("unchanged", "changed-1pct", "changed-10pct"):
        cost[w] = dict(sorted(res.by.get((INCR, w, "incremental"), {}).items()))
    if all(cost.values()):
        qs = []
        for rnd in sorted(set(cost["unchanged"]) & set(cost["changed-1pct"]) & set(cost["changed-10pct"])):
            t0, t1, t10 = (get(cost[w][rnd], "secs") for w in ("unchanged", "changed-1pct", "changed-10pct"))
            if None not in (t0, t1, t10) and t1 > t0:
                qs.append((t10 - t0) / (10 * (t1 - t0)))
        goal(goals, "incremental backup, in proportion to the changed data: (10% - unchanged) / "
             "(10 x (1% - unchanged)), the incremental's times per round", stat(qs), 1.1, better="lower")
    return {"cases": cases_out, "ratios": ratios, "goals": goals, "memory": memory}


SCALE = "60-scale"
INCR = "71-incremental"


def incr_lines(res):
    """The incremental group (tests/bench/71-incremental.sh)."""
    g = INCR
    L = [f"== {g}: `fleece backup --incremental` vs a full `fleece backup` of the same state,",
         "   wall clock of the whole command in the guest (s), median [min..max]"]
    for w in res.workloads(g):
        cases = res.cases(g, w)
        if not cases:
            continue
        r0 = next(iter(res.by[(g, w, cases[0])].values()))
        n = len(res.by[(g, w, cases[0])])
        if w.startswith("diag"):
            L.append(f"  -- {w}: where the time of an incremental goes (-v, messages stamped by the guest's clock);"
                     " it reads the writer round's changes too, not recorded elsewhere")
        elif w == "unchanged":
            L.append(f"  -- {w}: nothing changed (the incremental's fixed cost), origin "
                     f"{r0.get('size_bytes', 0) / 2**20:.0f} MiB, {n} round(s)")
        else:
            L.append(f"  -- {w}: {r0.get('changed_chunks')} chunks of 64 KiB changed, {n} round(s)"
                     + (", a writer running (fio 4 KiB random writes, 1000 IOPS cap)" if w.startswith("writer") else ""))
        for c in cases:
            recs = [r for _, r in sorted(res.by[(g, w, c)].items())]
            line = (f"    {c:<12} time {fmt(res.s(g, w, c, 'secs'), ' s', 2):>26}  "
                    f"read {fmt(mib(res.s(g, w, c, 'read_bytes')), ' MiB', 1):>28}  "
                    + (f"(fio's own run time {fmt(res.s(g, w, c, 'tool_secs'), ' s', 1)})" if c == "device" else
                       f"(the tool's read phase {fmt(res.s(g, w, c, 'tool_secs'), ' s', 1)})"))
            if any("samples" in r for r in recs):
                line += (f"  fleece peak: chunks_copied {fmt(mib(res.s(g, w, c, 'peak_copied_bytes')), ' MiB', 1)}, "
                         f"file {fmt(mib(res.s(g, w, c, 'peak_file_bytes')), ' MiB', 1)} "
                         f"({recs[0].get('samples_n')} samples); writer {recs[0].get('writer_ios')} writes"
                         f" at {recs[0].get('writer_iops', 0):.0f} IOPS; image verified: "
                         f"{'yes' if all(r.get('verified') for r in recs) else 'no'}")
            L.append(line)
            for r in recs[:1]:
                for x in r.get("summary", []):
                    L.append(f"      tool (round {r['round']}): {x}")
                if r.get("timeline"):
                    # The tool's messages (-v), each stamped with the guest's
                    # clock: seconds since the command started.
                    with open(os.path.join(res.dir, r["timeline"])) as f:
                        for x in f:
                            t, _, msg = x.strip().partition(" ")
                            try:
                                L.append(f"      +{float(t) - r['t0']:7.2f} s  {msg[:150]}")
                            except ValueError:
                                L.append(f"      {x.strip()[:160]}")
                    L.append(f"      +{r['t1'] - r['t0']:7.2f} s  (the command has exited)")
        if "full" in cases and "incremental" in cases:
            st = res.ratio(g, w, "incremental", "full", "secs")
            L.append(f"    incremental / full time: {fmt(st, '', 3)}; the tool's read phases: "
                     f"{fmt(res.ratio(g, w, 'incremental', 'full', 'tool_secs'), '', 3)}")
        if "full" in cases and "device" in cases:
            # fio's replay of the incremental's reads on the disk itself
            # (71-incremental.sh, device_reads): the device's floor.
            L.append(f"    device (fio, the same reads on the disk) / full time: "
                     f"{fmt(res.ratio(g, w, 'device', 'full', 'secs'), '', 3)}; "
                     f"incremental / device: {fmt(res.ratio(g, w, 'incremental', 'device', 'secs'), '', 2)}; "
                     f"the tool's read phase / fio's run time: "
                     f"{fmt(res.ratio(g, w, 'incremental', 'device', 'tool_secs'), '', 2)}")
    L.append("")
    return L


def scale_lines(res):
    """The scale group (tests/bench/60-scale.sh): times and memory."""
    g = SCALE
    ms = lambda s: s and {k: s[k] / 1000 for k in ("median", "min", "max")}
    L = [f"== {g}: times in ms on the guest's clock (TCG), median [min..max]"]
    for c in res.cases(g, "refused"):
        for r in res.by[(g, "refused", c)].values():
            L.append(f"  {c}: table of {r['sectors']} sectors refused: {r['error'].strip()}")
            L.append(f"    kernel log: {r['dmesg'].strip()}")
    L.append(f"  {'table':<22} {'load (ctr)':>24} {'resume':>24} {'SUnreclaim+vmalloc':>28}")
    for c in res.cases(g, "ctr"):
        if c.startswith("pairs64"):
            continue
        L.append(f"  {c:<22} {fmt(ms(res.s(g, 'ctr', c, 'load_us')), '', 1):>24} "
                 f"{fmt(ms(res.s(g, 'ctr', c, 'resume_us')), '', 1):>24} "
                 f"{fmt(mib(res.s(g, 'static', c, 'slab_vmalloc_bytes')), ' MiB', 2):>28}")
    for c in res.cases(g, "status"):
        n = res.by[(g, "status", c)][min(res.by[(g, "status", c)])]["calls"]
        f = res.s(g, "status", c, "fleece_us")
        li = res.s(g, "status", c, "linear_us")
        per = lambda s: s and {k: s[k] / n / 1000 for k in ("median", "min", "max")}
        L.append(f"  {c}: dmsetup status, {n} calls: fleece {fmt(per(f), ' ms', 2)} a call, "
                 f"dm-linear {fmt(per(li), ' ms', 2)} a call")
    for c in res.cases(g, "run"):
        L.append(f"  {c}: 4 KiB writes QD1, first touch (a copy each) vs second touch (none):")
        for w in ("firsttouch", "secondtouch"):
            L.append(f"    {w:<12} IOPS {fmt(res.s(g, 'run', c, f'extra/{w}/iops')):>20}  "
                     f"mean {fmt(res.s(g, 'run', c, f'extra/{w}/mean_us')):>20} us  "
                     f"p50 {fmt(res.s(g, 'run', c, f'extra/{w}/p50_us')):>20} us  "
                     f"p99 {fmt(res.s(g, 'run', c, f'extra/{w}/p99_us')):>20} us")
        L.append(f"    first / second touch IOPS: "
                 f"{fmt(res.ratio(g, 'run', c, c, 'extra/firsttouch/iops', base_path='extra/secondtouch/iops'), '', 3)}")
        L.append(f"  {c}: backup of the written part (64 KiB O_DIRECT reads, compared): view "
                 f"{fmt(res.s(g, 'run', c, 'extra/view/MBps'), ' MB/s', 1)}, raw origin "
                 f"{fmt(res.s(g, 'run', c, 'extra/raw/MBps'), ' MB/s', 1)}, view / raw "
                 f"{fmt(res.ratio(g, 'run', c, c, 'extra/view/MBps', base_path='extra/raw/MBps'), '', 3)}")
    for c in res.cases(g, "ctr"):
        if not c.startswith("pairs64"):
            continue
        rounds = res.by[(g, "ctr", c)]
        n = rounds[min(rounds)]["pairs"]
        t = res.s(g, "ctr", c, "create_us")
        m = res.s(g, "static", c, "slab_vmalloc_bytes")
        ks = res.s(g, "static", c, "delta_bytes/KernelStack")
        pc = res.s(g, "static", c, "delta_bytes/Percpu")
        d = lambda s, u: s and {k: s[k] / n / u for k in ("median", "min", "max")}
        L.append(f"  {c}: {n} tables in one dmsetup create --concise: {fmt(ms(t), ' ms', 0)}, "
                 f"{fmt(d(t, 1000), ' ms', 1)} and {fmt(d(m, 1024), ' KiB', 1)} "
                 f"(SUnreclaim+vmalloc) a pair; KernelStack {fmt(d(ks, 1024), ' KiB', 1)}, "
                 f"Percpu {fmt(d(pc, 1024), ' KiB', 1)} a pair")
    L.append("")
    return L


def table(res, out, title):
    L = [title, ""]
    groups = []
    for (g, _, _) in res.by:
        if g not in groups:
            groups.append(g)
    for g in sorted(groups):
        n = max(r["round"] for r in res.records if r["group"] == g)
        L.append(f"== {g} ({n} rounds)")
        for w in res.workloads(g):
            if g == SCALE and w != "static":
                continue	# in the scale section below
            if g == INCR:
                continue	# in the incremental section below
            if w == "static":
                L.append(f"  {'case':<20} {'chunks':>9} {'SUnreclaim+vmalloc delta':>30} {'MemFree drop':>30}")
                for c in res.cases(g, w):
                    chunks = res.s(g, w, c, "chunks")
                    sv = res.s(g, w, c, "slab_vmalloc_bytes")
                    mf = res.s(g, w, c, "memfree_drop_bytes")
                    kib = lambda s: s and {k: s[k] / 1024 for k in ("median", "min", "max")}
                    L.append(f"  {c:<20} {int(chunks['median']) if chunks else 0:>9} "
                             f"{fmt(kib(sv), ' KiB'):>30} {fmt(kib(mf), ' KiB'):>30}")
                continue
            L.append(f"  -- {w}")
            L.append(f"  {'case':<20} {'IOPS':>26} {'MB/s':>24} {'p50 us':>24} {'p99 us':>26}")
            for c in res.cases(g, w):
                L.append(f"  {c:<20} {fmt(res.s(g, w, c, 'iops')):>26} "
                         f"{fmt(res.s(g, w, c, 'bw_MBps'), '', 1):>24} "
                         f"{fmt(res.s(g, w, c, 'lat_pct_us/50.0')):>24} "
                         f"{fmt(res.s(g, w, c, 'lat_pct_us/99.0')):>26}")
        L.append("")
    if SCALE in groups:
        L.extend(scale_lines(res))
    if INCR in groups:
        L.extend(incr_lines(res))
    L.append("== ratios (per round, then median [min..max])")
    for r in out["ratios"]:
        L.append(f"  {r['name']:<66} {fmt(r['ratio'], '', 3)}")
    L.append("")
    if out["memory"]:
        m = out["memory"]
        L.append("== memory, 1 TiB origin, 64 KiB chunks")
        L.append(f"  chunks: {m['chunks']}")
        L.append(f"  SUnreclaim+vmalloc delta, fleece 1 TiB:    {fmt(mib(m['fleece_1t_slab_vmalloc_bytes']), ' MiB', 2)}")
        L.append(f"  same minus a dm-linear of 1 TiB:           {fmt(mib(m['fleece_1t_minus_linear_slab_vmalloc_bytes']), ' MiB', 2)}")
        L.append(f"  MemFree drop, fleece 1 TiB:                {fmt(mib(m['fleece_1t_memfree_drop_bytes']), ' MiB', 2)}")
        L.append(f"  of which beyond 2 bits per chunk:          {fmt(m['fleece_1t_beyond_2_bits_per_chunk_bytes'] and {k: m['fleece_1t_beyond_2_bits_per_chunk_bytes'][k] / 1024 for k in ('median', 'min', 'max')}, ' KiB', 0)}")
        L.append(f"  bits per chunk (slope 1 TiB vs 1 GiB):     {fmt(m['bits_per_chunk_slope_1t_vs_1g'], '', 3)}")
        L.append(f"  bits per chunk (slope 4K vs 64K chunks):   {fmt(m['bits_per_chunk_slope_4k_vs_64k_chunks'], '', 4)}")
        for k, v in m["peak_inflight_net_bytes"].items():
            L.append(f"  peak in-flight MemFree drop {k}: {fmt(mib(v), ' MiB', 1)}")
        for line in m.get("vmallocinfo") or []:
            L.append(f"  vmallocinfo (64 KiB chunks): {line}")
        for line in m.get("vmallocinfo_4k_chunks") or []:
            L.append(f"  vmallocinfo (4 KiB chunks): {line}")
        L.append("")
    L.append("== goals")
    for gl in out["goals"]:
        verdict = {True: "MET", False: "NOT MET", None: "NO DATA"}[gl["met"]]
        op = ">=" if gl["better"] == "higher" else "<="
        L.append(f"  [{verdict:>7}] {gl['goal']}: {fmt(gl['value'], '', 3)} (goal {op} {gl['target']})")
        if gl["detail"]:
            L.append(f"            {gl['detail']}")
    return "\n".join(L) + "\n"


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import math
    except ImportError:
        print(f"report: no matplotlib (apt-get install python3-matplotlib): {path} not written")
        return
    panels = []
    for (g, w, c) in res.by:
        if g == "50-memory" or not res.s(g, w, c, "lat_pct_us/50.0"):
            continue
        key = (g, w)
        if g == "20-firsttouch":
            key = (g, w + (" 1 MiB chunks" if c.endswith("-1m") else " 64 KiB chunks"))
        if key not in panels:
            panels.append(key)
    if not panels:
        return
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    xs = [-math.log10(1 - float(p) / 100) for p in PCTS]
    for ax, (g, label) in zip([a for row in axes for a in row], panels):
        w = label.split(" ")[0]
        for c in res.cases(g, w):
            if g == "20-firsttouch" and (c.endswith("-1m") != label.endswith("1 MiB chunks")):
                continue
            med, lo, hi = [], [], []
            for p in PCTS:
                st = res.s(g, w, c, "lat_pct_us/" + p)
                med.append(st["median"] if st else float("nan"))
                lo.append(st["min"] if st else float("nan"))
                hi.append(st["max"] if st else float("nan"))
            if all(math.isnan(v) for v in med):
                continue
            line, = ax.plot(xs, med, marker="o", ms=3, label=c)
            ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
        ax.set_yscale("log")
        shown = ("1.0", "50.0", "90.0", "99.0", "99.9")
        ax.set_xticks(xs)
        ax.set_xticklabels([p.rstrip("0").rstrip(".") if p in shown else "" for p in PCTS],
                           fontsize=7)
        ax.set_xlabel("percentile")
        ax.set_ylabel("total latency (us)")
        ax.set_title(f"{g}: {label}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in [a for row in axes for a in row][n:]:
        ax.axis("off")
    fig.suptitle("dm-fleece benchmarks: latency percentiles (median of rounds, band = min..max)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evidence_name(records, kver, storage, clock, ended):
    """The evidence file's name, without extension: date, kernel, storage,
    clock, the groups that ran, commit."""
    groups = sorted({r["group"].split("-")[0] for r in records})
    commit = os.environ.get("FLEECE_COMMIT") or "unknown-commit"
    return "-".join([time.strftime("%Y-%m-%d", time.localtime(ended)),
                     ".".join(kver.split(".")[:2]),
                     "brd" if "brd" in storage else "disk",
                     "icount" if "instruction" in clock else "hostclock",
                     "groups", *groups, commit])


def main():
    rc = 0
    args = sys.argv[1:]
    save = None
    if args[:1] == ["--save"]:
        save, args = args[1], args[2:]
    for d in args:
        src = os.path.join(d, "records.jsonl")
        if not os.path.exists(src):
            print(f"report: {src}: no records")
            rc = 1
            continue
        with open(src) as f:
            records = [normalize(json.loads(l), d) for l in f if l.strip()]
        res = Results(records)
        res.dir = d
        out = build(res)
        rounds = {}
        for r in records:
            rounds[r["group"]] = max(rounds.get(r["group"], 0), r["round"])
        kver = os.path.basename(os.path.normpath(d)).removeprefix("bench-")
        storage = read_note(d, "storage", "brd ram disks")
        vcpus = read_note(d, "vcpus", "?")
        clock = read_note(d, "clock", "host clock")
        title = (f"dm-fleece benchmarks: kernel {kver}, qemu TCG ({vcpus} vCPUs, {clock}), {storage}, "
                 f"{min(rounds.values(), default=0)} to {max(rounds.values(), default=0)} "
                 f"interleaved rounds; median [min..max]\n"
                 f"run ended {time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(src)))}")
        name = None
        if save:
            name = evidence_name(records, kver, storage, clock, os.path.getmtime(src))
            title += f"\nevidence file: {name}.txt (commit {os.environ.get('FLEECE_COMMIT') or 'unknown'})"
        text = table(res, out, title)
        doc = {"title": title, "kernel": kver, "rounds": rounds,
               "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               **out, "records": records}
        with open(os.path.join(d, "bench.json"), "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.join(d, "bench.txt"), "w") as f:
            f.write(text)
        sys.stdout.write(text)
        plot(res, os.path.join(d, "latency.png"))
        print(f"report: {d}/bench.txt, bench.json, latency.png")
        if name:
            os.makedirs(save, exist_ok=True)
            with open(os.path.join(save, name + ".txt"), "w") as f:
                f.write(text)
            if os.path.exists(os.path.join(d, "latency.png")):
                with open(os.path.join(d, "latency.png"), "rb") as a, \
                        open(os.path.join(save, name + "-latency.png"), "wb") as b:
                    b.write(a.read())
            print(f"evidence: {os.path.join(save, name)}.txt: the goals above, from this run; "
                  f"commit it to cite it in the README")
    return rc


if __name__ == "__main__":
    sys.exit(main())
