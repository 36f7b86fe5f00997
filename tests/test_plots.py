"""The verify plot reads at a glance: every runtime drawn and both precisions in its legend, drawn as the
points are (filled); axis labels; x ticks that reach the fastest point, all one size; the error bars
named for what they are."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

REPORT = Path(__file__).resolve().parent.parent / "docs" / "verify-report.json"


def test_the_verify_plot_has_its_legend_axes_and_ticks():
    from matplotlib.lines import Line2D

    from toolkit.report import plot_figure

    result = json.loads(REPORT.read_text())
    fig = plot_figure(result)
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    drawn = {r["runtime"].removesuffix(" bf16") for r in result["rows"] if r.get("latency_us") and r.get("accuracy")}
    assert drawn <= set(labels) and {"fp32", "int8"} <= set(labels)
    assert "reference accuracy + 95% CI of the difference" in labels
    for handle, label in zip(legend.legend_handles, labels, strict=False):
        if label in ("fp32", "int8"):
            assert isinstance(handle, Line2D) and handle.get_markerfacecolor() not in ("none", (0, 0, 0, 0))
    assert ax.get_xlabel().startswith("batch-1 latency") and ax.get_ylabel() == "test accuracy (%)"
    fastest = min(r["latency_us"]["p50"] for r in result["rows"] if r.get("latency_us"))
    ticks = ax.get_xticks()
    assert min(ticks) <= fastest and len(ticks) >= 3
    sizes = {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()}
    assert len(sizes) == 1
    # a default row (OpenVINO's bf16) takes its runtime's colour, not the grey of an unknown runtime
    colours = {line.get_color() for line in ax.get_lines() if line.get_marker() in ("o", "s")}
    assert "tab:gray" not in colours


def test_every_point_has_its_own_number_and_the_axis_stops_at_accuracy_s_limit():
    """Numbers were shared by rows within 8% of latency at one accuracy, so two points that sat apart
    carried one label; the accuracy axis ran to 104%."""
    from toolkit.report import plot_figure

    result = json.loads(REPORT.read_text())
    fig = plot_figure(result)
    ax = fig.axes[0]
    drawn = [r for r in result["rows"] if r.get("latency_us") and r.get("accuracy") is not None]
    numbers = sorted(int(t.get_text()) for t in ax.texts)
    assert numbers == list(range(1, len(drawn) + 1))
    legend = fig.texts[0].get_text().splitlines()
    assert len(legend) == len(drawn) and all(line.split(": ", 1)[0].isdigit() for line in legend)
    assert ax.get_ylim()[1] <= 100.5
