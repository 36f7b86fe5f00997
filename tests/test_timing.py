"""Timing rounds (toolkit.timing): medians with their spread, the machine's load, the noisy mark and
the fastest passing artifact."""

import json

import numpy as np
import pytest
from helpers import LOOSE, run

from toolkit import timing


def test_summary_is_the_median_over_rounds_with_its_spread():
    rounds = [{"latency_us": {"p50": p, "p95": p * 2, "p99": p * 3}, "throughput": t}
              for p, t in ((10.0, 900.0), (30.0, 1000.0), (12.0, 400.0))]
    s = timing.summarize(rounds)
    assert s["latency_us"] == {"p50": 12.0, "p95": 24.0, "p99": 36.0} and s["throughput"] == 900.0
    assert s["latency_rounds_us"] == [10.0, 30.0, 12.0] and s["latency_spread_us"] == [10.0, 30.0]
    assert s["throughput_rounds"] == [900.0, 1000.0, 400.0] and s["throughput_spread"] == [400.0, 1000.0]


def _stat(tmp_path, name, busy, idle, steal, cores=2):
    p = tmp_path / name
    per = "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(cores))
    p.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0\n{per}intr 0\n")
    return timing.cpu_snapshot(p)


def test_every_busy_column_of_proc_stat_counts(tmp_path):
    p = tmp_path / "s"
    # user nice system idle iowait irq softirq steal: busy = 1+2+3+6+7, total = busy + 4 + 5 + 8
    p.write_text("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\ncpuX\n")
    assert timing.cpu_snapshot(p) == (19, 8, 36, 2)
    p.write_text("cpu  1 2 3 4\ncpu0 1 2 3 4\n")  # an old kernel's four columns
    assert timing.cpu_snapshot(p) == (6, 0, 10, 1)


def test_machine_load_from_proc_stat(tmp_path):
    a = _stat(tmp_path, "a", busy=1000, idle=1000, steal=30)
    b = _stat(tmp_path, "b", busy=1150, idle=1040, steal=40)  # 200 jiffies: 150 busy, 40 idle, 10 stolen
    load = timing.load_between(a, b, own_cores=1)
    assert load == {"busy_cores": 1.5, "steal_pct": 5.0, "other_busy_cores": 0.5}
    b3 = _stat(tmp_path, "b3", busy=1001, idle=1001, steal=31)  # 3 jiffies: the shares keep 2 decimals
    assert timing.load_between(a, b3, own_cores=0) == {"busy_cores": 0.67, "steal_pct": 33.33, "other_busy_cores": 0.67}
    assert timing.load_between(None, b, 1) is None and timing.load_between(b, a, 1) is None
    assert timing.load_between(a, a, 1) is None  # no time passed: no load to tell


def test_noisy_exactly_at_and_one_step_past_each_limit():
    quiet = {"other_busy_cores": timing.NOISY_OTHER_CORES, "steal_pct": timing.NOISY_STEAL_PCT, "busy_cores": 1}
    row = {"id": "onnx-fp32@ort-cpu", "latency_spread_us": [100.0, 100.0 * timing.NOISY_SPREAD]}
    assert timing.noise([quiet], [row]) == []
    busy = {**quiet, "other_busy_cores": timing.NOISY_OTHER_CORES + 0.01}
    stolen = {**quiet, "steal_pct": timing.NOISY_STEAL_PCT + 0.01}
    wide = {**row, "latency_spread_us": [100.0, 100.0 * timing.NOISY_SPREAD + 0.01]}
    assert timing.noise([quiet, busy], [row]) == ["round 2: other processes kept 0.5 cores busy"]
    assert timing.noise([stolen], [row]) == ["round 1: 5% of the time stolen by the hypervisor"]
    assert timing.noise([quiet], [wide]) == ["onnx-fp32@ort-cpu: batch-1 p50 varied 1.25× over the rounds"]
    # a row timed with another (the same bytes) is that row's figures: its spread is said once, for that row
    assert timing.noise([quiet], [wide, {**wide, "id": "triton-fp32@ort-cpu", "measured_with": "onnx-fp32@ort-cpu"}]) \
        == ["onnx-fp32@ort-cpu: batch-1 p50 varied 1.25× over the rounds"]


def _row(rid, p50, tp, lat_span, tp_span, status="ok", ref=False):
    return {"id": rid, "status": status, "is_reference": ref, "latency_us": {"p50": p50}, "throughput": tp,
            "latency_spread_us": lat_span, "throughput_spread": tp_span}


def test_fastest_passing_artifact_with_its_margin_and_spread():
    rows = [_row("eager-fp32@torch", 5, 9e9, [5, 5], [9e9, 9e9], ref=True),  # the reference is no artifact
            _row("tflite-int8@litert", 1, 9e9, [1, 1], [9e9, 9e9], status="fail"),  # failing rows never win
            _row("onnx-fp32@ort-cpu", 20, 1000, [19, 21], [900, 1100]),
            _row("tflite-fp32@litert", 10, 1500, [9, 22], [1200, 1600]),
            _row("onnx-int8@ort-cpu", 30, 1200, [29, 31], [1000, 1300])]
    f = timing.fastest(rows)
    assert f["batch1"] == "tflite-fp32@litert" and f["batch1_next"] == "onnx-fp32@ort-cpu"
    assert f["batch1_margin"] == 2.0 and f["batch1_beyond_spread"] is False  # 22 µs worst > 19 µs best of the next
    assert f["throughput"] == "tflite-fp32@litert" and f["throughput_next"] == "onnx-int8@ort-cpu"
    assert f["throughput_margin"] == 1.25 and f["throughput_beyond_spread"] is False  # 1200 < 1300
    # tied: every passing row whose range overlaps the winner's, fastest first (ranges meeting at one value
    # overlap; one past them does not)
    assert f["batch1_tied"] == ["onnx-fp32@ort-cpu"] and f["throughput_tied"] == ["onnx-int8@ort-cpu"]
    rows[3]["latency_spread_us"], rows[3]["throughput_spread"] = [9, 18], [1301, 1600]
    f = timing.fastest(rows)
    assert f["batch1_beyond_spread"] is True and f["throughput_beyond_spread"] is True
    assert f["batch1_tied"] == [] and f["throughput_tied"] == []
    rows[3]["latency_spread_us"], rows[3]["throughput_spread"] = [9, 29], [1300, 1600]  # meets onnx-int8's at 1300
    f = timing.fastest(rows)
    assert f["batch1_tied"] == ["onnx-fp32@ort-cpu", "onnx-int8@ort-cpu"] and f["throughput_tied"] == ["onnx-int8@ort-cpu"]
    rows[3]["latency_spread_us"], rows[3]["throughput_spread"] = [9, 28.99], [1300.01, 1600]
    assert timing.fastest(rows)["batch1_tied"] == ["onnx-fp32@ort-cpu"] and timing.fastest(rows)["throughput_tied"] == []
    rows[3]["latency_spread_us"], rows[3]["throughput_spread"] = [9, 18], [1301, 1600]
    assert timing.fastest([rows[0], rows[1]]) is None
    two = timing.fastest([rows[2], rows[4]])  # two passing rows: the margin is measured
    assert two["batch1"] == "onnx-fp32@ort-cpu" and two["batch1_margin"] == 1.5 and two["batch1_beyond_spread"] is True
    assert timing.fastest([rows[2]])["batch1_next"] is None and timing.fastest([rows[2]])["batch1_tied"] == []
    assert timing.fastest([rows[2], {**rows[4], "latency_spread_us": None}])["batch1_tied"] == []  # no range: no tie
    copy = {**rows[3], "id": "triton-fp32@ort-cpu", "measured_with": "tflite-fp32@litert"}  # not a second winner
    f = timing.fastest([rows[2], rows[3], copy])
    assert f["batch1"] == "tflite-fp32@litert" and f["batch1_next"] == "onnx-fp32@ort-cpu"
    assert timing.fastest([copy]) is None
    touching = [_row("a", 10, 1000, [9, 12], [900, 1100]), _row("b", 12, 900, [12, 13], [800, 900])]
    f = timing.fastest(touching)  # ranges that meet at one value overlap: no clear win
    assert f["batch1_beyond_spread"] is False and f["throughput_beyond_spread"] is False


def test_verify_times_every_row_in_interleaved_rounds(onnx_family_export, tiny_export, tmp_path):
    r = run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
            "--rounds", 2, "--json", tmp_path / "v.json", "--wide")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "v.json").read_text())
    ran = [x for x in doc["rows"] if x["status"] == "ok" and not x["is_reference"]]
    assert len(ran) == 6 and doc["timing"]["rounds"] == 2 and len(doc["timing"]["machine_load"]) == 2
    for x in ran:
        assert len(x["latency_rounds_us"]) == 2 and len(x["throughput_rounds"]) == 2
        assert x["latency_us"]["p50"] == pytest.approx(float(np.median(x["latency_rounds_us"])))
        assert x["latency_spread_us"] == [min(x["latency_rounds_us"]), max(x["latency_rounds_us"])]
        assert x["peak_rss_mb"] > 0 and x["rss_growth_mb"] >= 0
    # the Triton files are the .onnx files' bytes on the same runtime: loaded and checked, run and timed once
    by_id = {x["id"]: x for x in ran}
    for p in ("fp32", "int8"):
        copy, first = by_id[f"triton-{p}@ort-cpu"], by_id[f"onnx-{p}@ort-cpu"]
        assert copy["measured_with"] == first["id"] and first["measured_with"] is None
        assert copy["latency_rounds_us"] == first["latency_rounds_us"] and copy["accuracy"] == first["accuracy"]
        assert copy["loaded_sha256"] == first["loaded_sha256"] and copy["file"] != first["file"]
    assert "Triton int8 on ORT CPU: the same bytes (SHA-256) as ONNX int8 on ORT CPU" in " ".join(r.output.split())
    ran = [x for x in ran if not x["measured_with"]]
    f = doc["fastest"]
    best = min(ran, key=lambda x: x["latency_us"]["p50"])
    assert f["batch1"] == best["id"] and f["throughput"] == max(ran, key=lambda x: x["throughput"])["id"]
    assert "fastest passing artifact on this machine" in r.output and "p50 range" in r.output


def test_search_keeps_the_default_unless_a_candidate_wins_beyond_the_spread():
    """--search's choice (toolkit.search.choose): the default recipe stays unless a passing candidate's
    slowest round is faster than the default's fastest — exactly at the default's fastest is not enough."""
    from toolkit.search import choose

    def row(speeds, passed=True, int8_layers=3):
        return {"speed_rounds": speeds, "passed": passed, "int8_layers": int8_layers}

    default = row([0.90, 0.95, 1.00])
    at = row([0.80, 0.85, 0.90])  # its slowest round ties the default's fastest: within the spread
    assert choose([default, at], 0) == 0
    past = row([0.80, 0.85, 0.8999])  # one step past
    assert choose([default, past], 0) == 1
    assert choose([default, row([0.5, 0.5, 0.8999], passed=False)], 0) == 0  # a failing one never wins
    faster = row([0.60, 0.62, 0.64], int8_layers=1)
    assert choose([default, past, faster], 0) == 2  # of those beyond the spread, the fastest
    # the default fails its gates: the passing candidate with the most int8 layers is the one kept
    failing_default = row([0.5, 0.5, 0.5], passed=False)
    fewer = row([0.85, 0.88, 0.90], int8_layers=2)  # faster, but not beyond the spread
    more = row([0.90, 0.95, 1.00], int8_layers=3)
    assert choose([failing_default, fewer, more], 0) == 2
    assert choose([failing_default, row([0.85, 0.86, 0.8999], int8_layers=2), more], 0) == 1
    with pytest.raises(ValueError):
        choose([failing_default], 0)


def test_idle_cores_are_the_ones_other_processes_leave(tmp_path):
    a = _stat(tmp_path, "a", busy=0, idle=0, steal=0)
    assert timing.idle_cores(a, _stat(tmp_path, "q", busy=10, idle=190, steal=0)) == (2, 0.1)  # quiet
    assert timing.idle_cores(a, _stat(tmp_path, "h", busy=100, idle=100, steal=0)) == (1, 1.0)  # one core busy
    assert timing.idle_cores(a, _stat(tmp_path, "f", busy=200, idle=0, steal=0)) == (1, 2.0)  # never below one
    assert timing.idle_cores(None, None)[1] is None  # unreadable: every core counts as idle


class _FakeClock:
    """The clocks throughput_loops reads, advanced only by the runtime double: the same counts on any
    CPU and under any load (a real clock under load once gave 7 calls where 13 were asserted)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu


class _Stepped:
    """A runtime double whose each call costs exactly `cpu` s of CPU and `wall` s of wall time on `clock`."""

    def __init__(self, clock: _FakeClock, cpu: float, wall: float):
        self.clock, self.cpu, self.wall_s, self.calls = clock, cpu, wall, 0

    def run(self, x):
        self.calls += 1
        self.clock.cpu += self.cpu
        self.clock.wall += self.wall_s


def test_throughput_counts_cpu_seconds_in_loops_of_at_least_25_ms(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    x = np.zeros((10, 1, 28, 28), np.float32)
    busy = _Stepped(clock, cpu=0.002, wall=0.006)  # two thirds of each call spent waiting for a core
    tp = timing.throughput_loops(busy, x, loops=3, min_seconds=0.025)
    assert busy.calls == 1 + 3 * 5  # a warm-up, then each loop the fewest 6 ms calls that reach 25 ms
    assert tp["cpu"] == pytest.approx(10 / 0.002) and tp["wall"] == pytest.approx(10 / 0.006)  # waiting not charged
    assert timing.THROUGHPUT_LOOP_S >= 0.025 and timing.THROUGHPUT_LOOPS >= 3


def test_a_round_keeps_wall_throughput_beside_the_cpu_figure():
    rounds = [{"latency_us": {"p50": 10.0, "p95": 11.0, "p99": 12.0}, "throughput": t, "throughput_wall": w}
              for t, w in ((100.0, 50.0), (110.0, 90.0), (90.0, 80.0))]
    s = timing.summarize(rounds)
    assert s["throughput"] == 100.0 and s["throughput_wall"] == 80.0


def test_a_row_measured_with_another_fails_with_it(supplier, tiny_export, monkeypatch, in_process):
    """The Triton int8 row runs as the ONNX int8 row it copies: when that one fails, so does the copy, with
    the reason; a Triton file whose bytes differ from every other file is measured on its own."""
    from toolkit.errors import ToolkitError
    from toolkit.runtimes.candidate import Candidate

    logits = Candidate.logits

    def failing(self, images, *a, **k):
        if self.file == "cnn_int8.onnx":
            raise ToolkitError("the runtime stopped")
        return logits(self, images, *a, **k)

    monkeypatch.setattr(Candidate, "logits", failing)
    r = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE, "--json", "-")
    assert r.exit_code == 1
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    assert rows["onnx-int8@ort-cpu"]["status"] == "fail" and rows["triton-int8@ort-cpu"]["status"] == "fail"
    assert rows["triton-int8@ort-cpu"]["reasons"] == ["as ONNX int8 on ORT CPU (the same bytes): the runtime stopped"]
    assert rows["triton-fp32@ort-cpu"]["status"] == "ok" and rows["triton-fp32@ort-cpu"]["measured_with"] == "onnx-fp32@ort-cpu"
    assert rows["ort-int8@ort-cpu"]["status"] == "ok" and rows["ort-int8@ort-cpu"]["measured_with"] is None  # other bytes


def test_the_report_names_every_row_tied_with_the_fastest_and_a_clear_win_as_such():
    from toolkit.report import _timing_lines

    def row(rid, name, p50, tp):
        return {"id": rid, "name": name, "runtime": "RT", "latency_us": {"p50": p50}, "throughput": tp}

    rows = [row("a", "A", 20.0, 1000.0), row("b", "B", 21.0, 990.0), row("c", "C", 40.0, 500.0)]
    result = {"rows": rows, "throughput_batch": 256, "machine": {"cpu": {"model": "CPU X"}},
              "timing": {"rounds": 3, "machine_load": [], "noisy": []},
              "fastest": {"batch1": "a", "batch1_tied": ["b", "c"], "batch1_next": "b", "batch1_margin": 1.05,
                          "batch1_beyond_spread": False, "throughput": "a", "throughput_tied": [],
                          "throughput_next": "b", "throughput_margin": 1.01, "throughput_beyond_spread": True}}
    line = " ".join(_timing_lines(result)[1].split())
    assert line == ("fastest passing artifact on this machine (CPU X): batch 1: A on RT (20 µs), tied within the spread "
                    "with B on RT, C on RT: no clear win; batch 256: A on RT (1,000 img/s), 1.01× ahead of B on RT, "
                    "beyond the spread")
