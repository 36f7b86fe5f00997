"""Render a verify result: a terminal table, Markdown, and an optional plot."""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.runtimes import RUNTIMES
from toolkit.runtimes.candidate import Placement


def _pct(v):
    return "—" if v is None else f"{v * 100:.2f}"


def _placement(p: dict | None) -> str:
    """The runtime's own line for where it ran the model (toolkit.runtimes.candidate.Placement)."""
    found = Placement.from_json(p)
    return found.summary or found.backend if found else "—"


COLUMNS = ["row", "runtime", "status", "acc %", "prec %", "rec %", "agree %", "flips", "max|Δlogit|",
           "Δacc pts [95% CI]", "p50 µs", "p50 range", "p95 µs", "p99 µs", "img/s", "img/s range", "KiB", "peak MB",
           "lat×"]
# What decides pass/fail and speed: fits a 120-column terminal (`--wide` shows every column).
NARROW = ["row", "runtime", "status", "acc %", "agree %", "flips", "max|Δlogit|", "Δacc pts [95% CI]", "p50 µs",
          "img/s", "KiB"]
WIDTH = 120
SHORT = {"max|Δlogit|": "max|Δ|"}  # headers shortened in the default (120-column) table


def row_cells(r: dict) -> list[str]:
    lat = r.get("latency_us") or {}
    ci = r.get("acc_diff_ci95") or [0.0, 0.0]
    delta = "—" if r.get("acc_diff") is None or r.get("is_reference") else (
        f"{r['acc_diff'] * 100:+.2f} [{ci[0] * 100:+.2f},{ci[1] * 100:+.2f}]")
    # "skip", not "skipped": the default table fits 120 columns (every row's reason is in its notes)
    status = "FAIL" if r["status"] == "fail" else "ref" if r.get("is_reference") else \
        "skip" if r["status"] == "skipped" else r["status"]
    return [
        r["name"], r["runtime"], status, _pct(r.get("accuracy")), _pct(r.get("macro_precision")),
        _pct(r.get("macro_recall")), _pct(r.get("agreement")), "—" if r.get("flipped") is None else str(r["flipped"]),
        "—" if r.get("max_abs_logit_diff") is None else f"{r['max_abs_logit_diff']:.1e}", delta,
        "—" if not lat else f"{lat['p50']:.0f}", _range(r.get("latency_spread_us"), "{:.0f}"),
        *("—" if not lat else f"{lat[k]:.0f}" for k in ("p95", "p99")),
        "—" if r.get("throughput") is None else f"{r['throughput']:,.0f}", _range(r.get("throughput_spread"), "{:,.0f}"),
        "—" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1024:.1f}",
        "—" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}",
        "—" if r.get("latency_ratio") is None else f"{r['latency_ratio']:.2f}",
    ]


def _range(span, fmt: str) -> str:
    return "—" if not span else f"{fmt.format(span[0])}–{fmt.format(span[1])}"


def _timing_lines(result: dict) -> list[str]:
    """How the timings were taken and whether the machine was quiet; the fastest passing artifact."""
    t = result.get("timing") or {}
    if not t:
        return []
    loads = [f"{x['other_busy_cores']:.1f}" if x else "?" for x in t.get("machine_load", [])]
    lines = [f"timing: {t['rounds']} round(s), rows interleaved; p50 and img/s are medians over the rounds "
             f"(ranges: --wide); other processes' busy cores per round: {', '.join(loads) or '?'}"
             + (" — NOISY: " + "; ".join(t["noisy"]) if t.get("noisy") else " — quiet")]
    f = result.get("fastest")
    if f:
        names = {r["id"]: f"{r['name']} on {r['runtime']}" for r in result["rows"]}
        by_id = {r["id"]: r for r in result["rows"]}

        def part(key: str, figure: str) -> str:
            s = f"{names[f[key]]} ({figure})"
            tied = f.get(f"{key}_tied") or []
            if tied:  # which of tied rows comes first is noise: every one is named
                s += f", tied within the spread with {', '.join(names[t] for t in tied)}: no clear win"
            elif f[f"{key}_next"]:
                s += (f", {f[f'{key}_margin']:.2f}× ahead of {names[f[f'{key}_next']]}, "
                      + ("beyond the spread" if f[f"{key}_beyond_spread"] else "within the spread: not a clear win"))
            return s

        cpu = (result.get("machine") or {}).get("cpu", {}).get("model", "this CPU")
        lines.append(f"fastest passing artifact on this machine ({cpu}): batch 1: "
                     + part("batch1", f"{by_id[f['batch1']]['latency_us']['p50']:.0f} µs")
                     + f"; batch {result['throughput_batch']}: "
                     + part("throughput", f"{by_id[f['throughput']]['throughput']:,.0f} img/s"))
    return lines


def _notes(result: dict) -> list[str]:
    notes = []
    for r in result["rows"]:
        label = f"{r['name']} on {r['runtime']}"
        if r.get("measured_with") and r["status"] == "ok":
            first = next((f"{x['name']} on {x['runtime']}" for x in result["rows"] if x["id"] == r["measured_with"]),
                         r["measured_with"])
            notes.append(f"{label}: the same bytes (SHA-256) as {first}, on the same runtime: measured and timed "
                         "once, its figures are shown for both")
        if r.get("placement"):
            notes.append(f"{label}: {_placement(r['placement'])}")
        if r.get("precision") == "int8" and r.get("accuracy") is not None and not r.get("is_reference"):
            notes.append(f"{label}: {_scores(r)}")
        if r.get("int8_arithmetic") and r["status"] != "skipped":
            exact = {True: "; the file is exact on this CPU kind",
                     False: "; the file is NOT exact on this CPU kind (exported with --int8-for vnni: full-range "
                            "weights saturate here; re-export with --int8-for portable)"}.get(r.get("int8_exact_here"), "")
            notes.append(f"{label}: int8 arithmetic here: {r['int8_arithmetic']}{exact}")
        o = r.get("ood")
        if o and not r.get("is_reference") and (r.get("precision") == "int8" or o["agreement_pct"] < 100):
            rule, kept, others = _ood_words(result)
            notes.append(f"{label}: {rule} decisions as the reference's on {o['test_agreement_pct']:.2f}% of "
                         f"test images and {o['non_digit_agreement_pct']:.2f}% of {o['non_digits']} {others} "
                         f"({kept} accepted {o['test_accepted_pct']:.2f}%, reference {o['reference_test_accepted_pct']:.2f}%;"
                         f" {others} rejected {o['non_digits_rejected_pct']:.2f}%, reference "
                         f"{o['reference_non_digits_rejected_pct']:.2f}%)")
        if r.get("batch_consistent") is not None:
            sizes = "/".join(str(b) for b in r.get("consistency_batches") or (1, 2, 7, 64, 1000))
            notes.append(f"{label}: batch sizes {sizes} {'agree' if r['batch_consistent'] else 'DISAGREE'}")
        for reason in r.get("reasons", []):
            notes.append(f"{label}: {'FAIL' if r['status'] == 'fail' else r['status']}: {reason}")
    return notes


def _ood_words(result: dict) -> tuple[str, str, str]:
    """The rule's name, what it keeps and what it rejects, in the data set's language: MNIST's digits,
    or the C classes of any other data set."""
    from toolkit.ood import rule_words

    return rule_words(result.get("classes"))


def _scores(r: dict) -> str:
    """An int8 row's output saturation and score fidelity, in words."""
    sat, fid = r.get("saturation"), r.get("score_fidelity") or {}
    if sat:
        lo, hi = sat["output_range"]
        part = (f"int8 output covers [{lo:.1f}, {hi:.1f}]; {sat['values_at_limits_pct']:.2f}% of logits at its "
                f"limits, top logit clipped on {sat['clipped_top_pct']:.2f}% of images")
    else:
        part = "saturation not measured (a float output, or an .ort graph this reader does not parse)"
    if fid:
        part += (f"; top-class probability moved by at most {fid['top_prob_abs_diff_max']:.3f} "
                 f"(99th percentile {fid['top_prob_abs_diff_p99']:.4f})")
    return part


def _coverage(result: dict) -> str:
    checked, targets = result["targets_checked"], result["targets"]
    unchecked = [t for t in targets if t not in checked]
    skipped = result.get("not_exported") or []
    return (f"checked {len(checked)} of {len(targets)} exported artifacts ({', '.join(checked) or 'none'})"
            + (f"; not run here: {', '.join(unchecked)}" if unchecked else "")
            + (f"; {len(skipped)} not exportable: {', '.join(e['target'] for e in skipped)}" if skipped else ""))


def format_table(result: dict, wide: bool = False) -> str:
    """The terminal report. By default every line fits 120 columns: the columns that decide pass/fail
    and speed (lat× instead of KiB when a latency gate is set), notes wrapped; `wide` shows all."""
    columns = list(COLUMNS)
    if not wide:
        columns = NARROW if not result["gates"].get("max_latency_ratio") else NARROW[:-1] + ["lat×"]
    keep = [COLUMNS.index(c) for c in columns]
    shown = [SHORT.get(c, c) for c in columns] if not wide else columns  # the narrow table's short headers
    cells = [shown] + [[row_cells(r)[i] for i in keep] for r in result["rows"]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    g = result["gates"]
    text = [""] + _notes(result) + [""]
    text.append(
        f"gates: fp32 identical predictions and max|Δlogit| ≤ {g['fp32_max_abs_logit_diff']:g}; int8 drop ≤ "
        f"{g['int8_max_drop_points']:g} points and agreement ≥ {g['int8_min_agreement_pct']:g}%"
        + (f"; latency ratio ≤ {g['max_latency_ratio']:g}" if g.get("max_latency_ratio") else "")
    )
    text.append(_coverage(result))
    text.append(f"{result['n_test']:,} test images; latency at batch 1, throughput at batch {result['throughput_batch']}, "
                f"{result['threads']} thread(s); {result['seconds']:.1f} s")
    text += _timing_lines(result)
    phases = (result.get("timing") or {}).get("phases_s")
    if wide and phases:  # where the wall time went
        cpu = (result.get("timing") or {}).get("cpu_s")
        text.append("time by phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                    + (f"; {cpu:.1f} CPU s in all" if cpu is not None else ""))
    text.append(verdict(result))
    if not wide:
        import textwrap

        text = [part for line in text
                for part in (textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False) or [""])]
    return "\n".join(lines + text)


def verdict(result: dict) -> str:
    """PASS or FAIL, with how much was checked: a PASS over part of an export says which part."""
    checked, targets = result["targets_checked"], result["targets"]
    if not result["passed"]:
        return "FAIL: " + "; ".join(result["failed_rows"])
    if len(checked) < len(targets):
        return f"PASS for the {len(checked)} of {len(targets)} artifacts checked here (not run: " \
               f"{', '.join(t for t in targets if t not in checked)})"
    skipped = result.get("not_exported") or []
    return f"PASS (all {len(targets)} artifacts checked" + \
        (f"; {len(skipped)} target(s) not exportable: " + "; ".join(f"{e['target']}: {e['reason'][:80]}" for e in skipped)
         if skipped else "") + ")"


def _md_cell(text) -> str:
    """A Markdown table cell: pipes escaped (a bare | ends the cell), no line breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_markdown(result: dict) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row_cells(r)) + " |" for r in result["rows"]]
    lines.append("")
    lines += [f"- {n}" for n in _notes(result)]
    lines += [""] + [_md_cell(x) for x in _timing_lines(result)]
    lines.append("")
    lines.append(f"**{_md_cell(verdict(result))}** — {result['n_test']:,} test images, "
                 f"{result['threads']} thread(s), CPU: {result['machine']['cpu']['model']}")
    return "\n".join(lines) + "\n"


RUNTIME_COLORS = {"PyTorch eager": "black", "reference.npz": "black", **{s.label: s.color for s in RUNTIMES}}


def _runtime_of(label: str) -> str:
    """The registry's runtime for a row's runtime label ("OpenVINO CPU bf16": a default row of "OpenVINO CPU")."""
    return max((rt for rt in RUNTIME_COLORS if label == rt or label.startswith(rt + " ")), key=len, default=label)


def _color(label: str) -> str:
    return RUNTIME_COLORS.get(_runtime_of(label), "tab:gray")


NICE_TICKS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 2000, 5000, 10000)


def write_plot(result: dict, path: Path) -> None:
    """Accuracy against batch-1 p50 latency per row, with the 95% interval of each row's accuracy
    difference to the reference (needs matplotlib)."""
    import matplotlib.pyplot as plt

    from toolkit.fsutil import atomic_path

    fig = plot_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_figure(result: dict):
    """The plot as a matplotlib Figure (write_plot saves it; tests read its legend and axes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolkitError("--plot needs matplotlib (pip install 'mnisttk[plot]')") from None
    from toolkit.safetext import plot_text

    with matplotlib.rc_context(plot_text()):  # labels from files are text, never mathtext
        return _figure(result, plt)


def _figure(result: dict, plt):
    import math

    fig, ax = plt.subplots(figsize=(10, 5))
    ref_acc = next((r["accuracy"] for r in result["rows"] if r.get("is_reference")), None)
    points = []
    for r in result["rows"]:
        if not r.get("latency_us") or r.get("accuracy") is None:
            continue
        x, y = r["latency_us"]["p50"], r["accuracy"] * 100
        lo, hi = r.get("acc_diff_ci95") or [0.0, 0.0]
        # The bar spans the reference's accuracy plus the 95% interval of this row's difference to it
        # (paired bootstrap): where this row's accuracy may lie, judged against the reference.
        base = ref_acc if ref_acc is not None else r["accuracy"]
        err = [[max(0.0, y - (base + lo) * 100)], [max(0.0, (base + hi) * 100 - y)]]
        color = "tab:red" if r["status"] == "fail" else _color(r["runtime"])
        ax.errorbar(x, y, yerr=err, fmt="s" if r["precision"] == "int8" else "o", capsize=4, color=color)
        points.append((x, y, f"{r['name']} ({r['runtime']})"))
    # One number per point, beside it; points that land close together (latency within 8%, accuracy within
    # 0.05 points) get their numbers stacked upwards, so no number stands for two points that sit apart.
    legend = []
    placed: list[tuple[float, float]] = []
    for i, (x, y, label) in enumerate(sorted(points), 1):
        near = sum(1 for px, py in placed if abs(math.log(x / px)) < 0.08 and abs(y - py) < 0.05)
        placed.append((x, y))
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 5 + 9 * near), fontsize=8,
                    weight="bold")
        legend.append(f"{i}: {label}")
    fig.text(0.72, 0.88, "\n".join(legend), fontsize=7.5, va="top", family="monospace")
    fig.subplots_adjust(right=0.70)
    # What the colours, markers and lines mean: a legend of proxies (one per runtime drawn, per precision)
    from matplotlib.lines import Line2D

    drawn = {_runtime_of(r["runtime"]) for r in result["rows"] if r.get("latency_us") and r.get("accuracy") is not None}
    handles = [Line2D([], [], color=RUNTIME_COLORS.get(rt, "tab:gray"), marker="o", ls="", label=rt)
               for rt in RUNTIME_COLORS if rt in drawn]
    # filled, as the points are; black: the marker says the precision, the colour the runtime
    handles += [Line2D([], [], color="k", marker="o", ls="", label="fp32"),
                Line2D([], [], color="k", marker="s", ls="", label="int8"),
                Line2D([], [], color="k", marker="|", ls="", markersize=12,
                       label="reference accuracy + 95% CI of the difference")]
    if any(r["status"] == "fail" for r in result["rows"]):
        handles.append(Line2D([], [], color="tab:red", marker="o", ls="", label="failed a gate"))
    g = result["gates"]
    if ref_acc is not None:  # the int8 accuracy gate: at most int8_max_drop_points below the reference
        y = ref_acc * 100 - g["int8_max_drop_points"]
        ax.axhline(y, color="tab:red", ls="--", lw=1)
        handles.append(Line2D([], [], color="tab:red", ls="--", label=f"int8 gate: ref − {g['int8_max_drop_points']:g} pts"))
    ref_p50 = next(((r.get("latency_us") or {}).get("p50") for r in result["rows"] if r.get("is_reference")), None)
    if g.get("max_latency_ratio") and ref_p50:
        ax.axvline(ref_p50 * g["max_latency_ratio"], color="tab:red", ls=":", lw=1)
        handles.append(Line2D([], [], color="tab:red", ls=":", label=f"latency gate: {g['max_latency_ratio']:g}× ref"))
    ax.legend(handles=handles, loc="lower left", fontsize=7.5, framealpha=0.85)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    if points:  # ticks at round values across the whole range, the fastest point included, one size
        xs = [p[0] for p in points]
        lo_x, hi_x = min(xs) / 1.25, max(xs) * 1.25
        ax.set_xlim(lo_x, hi_x)
        ticks: list[float] = [t for t in NICE_TICKS if lo_x <= t <= hi_x]
        if len(ticks) < 3:
            ticks = sorted({round(v, 1) for v in (lo_x * 1.1, math.sqrt(lo_x * hi_x), hi_x / 1.1)})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.tick_params(axis="both", which="major", labelsize=8)
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 100.5))  # an interval's bar may reach past 100%; an accuracy cannot
    ax.set_xlabel("batch-1 latency p50 (µs, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("mnisttk verify: accuracy against batch-1 latency")
    ax.grid(True, alpha=0.3)
    return fig
