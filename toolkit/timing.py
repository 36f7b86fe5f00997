"""Timing a user can trust on a shared machine: the one timing module of verify, `export --search`
and the benchmark harness.

A figure is a median over rounds (every row timed once per round, the rows interleaved round-robin,
so a burst of load hits all of them), reported with its spread (min–max over the rounds); the
machine's load is sampled per round from /proc/stat (busy cores, steal), and a run whose load or
spread is too high is marked noisy, never failed. Edge side: numpy and the standard library only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# A run is noisy when, in some round, other processes kept more than this many cores busy or the
# hypervisor stole more than this % of the time, or when a row's batch-1 p50 varied by more than this
# ratio (max/min) over the rounds. The first two are what this 2-core machine shows when a second job
# starts; the ratio is twice the round-to-round drift measured on it when quiet (about 1.1).
NOISY_OTHER_CORES = 0.5
NOISY_STEAL_PCT = 5.0
NOISY_SPREAD = 1.25


def latency_us(model, x1: np.ndarray, warmup: int = 50, iters: int = 500) -> dict:
    """Batch-1 latency percentiles in µs after warm-up (`model.run` on a prepared input)."""
    for _ in range(warmup):
        model.run(x1)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        model.run(x1)
        times[i] = time.perf_counter_ns() - t0
    p50, p95, p99 = np.percentile(times / 1e3, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


THROUGHPUT_LOOP_S = 0.025  # each timed loop runs the batch for at least this long: scheduling averages out
THROUGHPUT_LOOPS = 3  # loops per round; the figure is their median


def throughput_loops(model, x: np.ndarray, loops: int = THROUGHPUT_LOOPS,
                     min_seconds: float = THROUGHPUT_LOOP_S) -> dict:
    """Images per CPU-second and per wall second on batch `x`: `loops` timed loops after one warm-up,
    each calling the batch until `min_seconds` of wall time have passed; medians over the loops.

    The CPU figure counts this process's CPU time (every thread of it: a row runs in a child of its
    own), so time spent descheduled while other processes run is not charged to the artifact: on a
    busy machine it ranks artifacts as a quiet one does, where wall time swings with the load. With one
    thread (verify's default) the two agree on a quiet machine; with more, the CPU figure is work per
    core-second and the wall figure the speed-up."""
    model.run(x)
    per_cpu, per_wall = [], []
    for _ in range(loops):
        calls, w0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            model.run(x)
            calls += 1
            wall = time.perf_counter() - w0
            if wall >= min_seconds:
                break
        cpu = time.process_time() - c0
        per_wall.append(calls * len(x) / wall)
        per_cpu.append(calls * len(x) / cpu if cpu > 0 else calls * len(x) / wall)
    return {"cpu": float(np.median(per_cpu)), "wall": float(np.median(per_wall))}


def throughput(model, x: np.ndarray, repeats: int = THROUGHPUT_LOOPS) -> float:
    """Images per CPU-second on batch `x` (throughput_loops' figure that holds under load)."""
    return throughput_loops(model, x, loops=repeats)["cpu"]


def one_round(cand, images_u8: np.ndarray, throughput_batch: int, latency_iters: int) -> dict:
    """One round of a row: batch-1 percentiles and throughput (per CPU-second, and per wall second
    beside it), each on the runtime's own input."""
    tp = throughput_loops(cand, cand.bench_input(images_u8[:throughput_batch]))
    return {"latency_us": latency_us(cand, cand.bench_input(images_u8[:1]), iters=latency_iters),
            "throughput": tp["cpu"], "throughput_wall": tp["wall"]}


def summarize(rounds: list[dict]) -> dict:
    """A row's rounds as its reported figures: each percentile and the throughput as the median over
    the rounds, the per-round batch-1 p50s and throughputs, and their min–max spread."""
    p = {k: [r["latency_us"][k] for r in rounds] for k in ("p50", "p95", "p99")}
    tp = [r["throughput"] for r in rounds]
    wall = [r["throughput_wall"] for r in rounds if r.get("throughput_wall") is not None]
    return {"latency_us": {k: float(np.median(v)) for k, v in p.items()},
            "throughput": float(np.median(tp)), "throughput_wall": float(np.median(wall)) if wall else None,
            "latency_rounds_us": [float(v) for v in p["p50"]], "throughput_rounds": [float(v) for v in tp],
            "latency_spread_us": [float(min(p["p50"])), float(max(p["p50"]))],
            "throughput_spread": [float(min(tp)), float(max(tp))]}


def cpu_snapshot(stat: Path = Path("/proc/stat")) -> tuple | None:
    """(busy, steal, total) jiffies over all cores, and the number of cores; None where unreadable."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    head = lines[0].split()
    if head[0] != "cpu":
        return None
    v = [int(x) for x in head[1:]] + [0] * 10
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    cores = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal, max(cores, 1)


def rotated(items: list, k: int) -> list:
    """`items` in round k's order: rotated by k, so no one is always first or after the same neighbour."""
    shift = k % len(items) if items else 0
    return items[shift:] + items[:shift]


def load_between(a: tuple | None, b: tuple | None, own_cores: float) -> dict | None:
    """The machine's load between two snapshots: busy cores (all processes), steal %, and the busy
    cores beyond the `own_cores` this run keeps busy (other processes)."""
    if a is None or b is None or b[2] <= a[2]:
        return None
    total, cores = b[2] - a[2], b[3]
    busy_cores = (b[0] - a[0]) / total * cores
    steal_pct = (b[1] - a[1]) / total * 100
    return {"busy_cores": round(busy_cores, 2), "steal_pct": round(steal_pct, 2),
            "other_busy_cores": round(max(0.0, busy_cores - own_cores), 2)}


def idle_cores(a: tuple | None, b: tuple | None) -> tuple[int, float | None]:
    """(the cores other processes left idle between two snapshots, at least 1; the busy cores seen, or
    None where /proc/stat is unreadable: then every core counts as idle)."""
    load = load_between(a, b, 0.0)
    cores = (b or a or (0, 0, 0, 0))[3] or 1
    if load is None:
        return max(1, cores), None
    return max(1, min(cores, int(cores - load["busy_cores"] + 0.5))), load["busy_cores"]


def sample_idle_cores(seconds: float = 0.3, stat: Path = Path("/proc/stat")) -> tuple[int, float | None]:
    """idle_cores over a short look at the machine now (the same load measure verify uses per round)."""
    a = cpu_snapshot(stat)
    time.sleep(seconds)
    return idle_cores(a, cpu_snapshot(stat))


def noise(machine_load: list, rows: list[dict]) -> list[str]:
    """Why the timings of a run are not to be trusted (empty: a quiet run)."""
    why = []
    for i, load in enumerate(machine_load):
        if load and load["other_busy_cores"] > NOISY_OTHER_CORES:
            why.append(f"round {i + 1}: other processes kept {load['other_busy_cores']:.1f} cores busy")
        if load and load["steal_pct"] > NOISY_STEAL_PCT:
            why.append(f"round {i + 1}: {load['steal_pct']:.0f}% of the time stolen by the hypervisor")
    for r in (r for r in rows if not r.get("measured_with")):  # a row timed with another: said once
        lo, hi = r.get("latency_spread_us") or (None, None)
        if lo and hi and hi / lo > NOISY_SPREAD:
            why.append(f"{r['id']}: batch-1 p50 varied {hi / lo:.2f}× over the rounds")
    return why


def fastest(rows: list[dict]) -> dict | None:
    """The fastest passing artifact at batch 1 (lowest median p50) and at the throughput batch
    (highest median throughput), each with its margin over the next passing one, whether that margin
    exceeds the spread (their min–max ranges over the rounds do not overlap), and every passing row
    tied with it (`…_tied`: its range overlaps the winner's, fastest first): a tie is a result, since
    which of two tied rows comes first is the machine's noise. The reference row is not an artifact
    and is left out, as is a row timed with another (the same bytes: its figures)."""
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("is_reference") and r.get("latency_us")
          and r.get("throughput") and not r.get("measured_with")]
    if not ok:
        return None
    by_p50 = sorted(ok, key=lambda r: r["latency_us"]["p50"])
    by_tp = sorted(ok, key=lambda r: -r["throughput"])
    lat, tp = "latency_spread_us", "throughput_spread"
    out = {"batch1": by_p50[0]["id"], "throughput": by_tp[0]["id"],
           "batch1_tied": [r["id"] for r in by_p50[1:] if _overlap(by_p50[0].get(lat), r.get(lat))],
           "throughput_tied": [r["id"] for r in by_tp[1:] if _overlap(by_tp[0].get(tp), r.get(tp))]}
    if len(ok) == 1:
        return {**out, **{f"{k}_{v}": None for k in ("batch1", "throughput") for v in ("next", "margin", "beyond_spread")}}
    (a, b), (c, d) = by_p50[:2], by_tp[:2]
    return {**out, "batch1_next": b["id"], "batch1_margin": b["latency_us"]["p50"] / a["latency_us"]["p50"],
            "batch1_beyond_spread": _apart(a.get(lat), b.get(lat)),
            "throughput_next": d["id"], "throughput_margin": c["throughput"] / d["throughput"],
            "throughput_beyond_spread": _apart(c.get(tp), d.get(tp))}


def _overlap(a, b) -> bool:
    """Whether two [min, max] ranges share a value; a row without a range is never called tied."""
    return bool(a and b and a[0] <= b[1] and b[0] <= a[1])


def _apart(a, b) -> bool:
    """Whether two measured [min, max] ranges share no value (a margin beyond the spread)."""
    return bool(a and b) and not _overlap(a, b)
