"""`verify --html FILE`: the report as one self-contained page a person can look at — the verdict, the
table, the plot, each row's notes, and the test images an int8 (or reduced-precision) row changed,
drawn as thumbnails with both predictions. Everything is inside the file (images as data: URIs); it
loads nothing from anywhere. Edge side: numpy, Pillow for the thumbnails, matplotlib for the plot
where installed."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import numpy as np

from toolkit.report import COLUMNS, _notes, row_cells, verdict

MAX_THUMBNAILS = 48  # changed test images drawn per report, shared between the groups (every index is in the JSON)
MIN_PER_GROUP = 6  # each distinct set of changes shows at least this many, however many groups there are
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+3),th{text-align:left}
tr.fail td{background:#fde2e2}tr.ref td{background:#eef}h1 .pass{color:#060}h1 .fail{color:#a00}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}figure img{image-rendering:pixelated}
ul.notes{font-size:13px}"""


def _png(data: np.ndarray, scale: int = 3) -> str:
    """A uint8 image (grey H×W, RGB or RGBA H×W×C; other channel counts: the first) as a PNG data: URI,
    `scale`× larger (nearest neighbour)."""
    from PIL import Image

    data = np.asarray(data, np.uint8)
    if data.ndim == 3 and data.shape[2] not in (3, 4):
        data = data[..., 0]
    img = Image.fromarray(data).resize((data.shape[1] * scale, data.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_uri(result: dict) -> str | None:
    """The report's plot (toolkit.report.write_plot) as a data: URI, or None without matplotlib."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    from toolkit.report import write_plot

    with tempfile.TemporaryDirectory(prefix="mnisttk-html-") as tmp:
        path = Path(tmp) / "plot.png"
        write_plot(result, path)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _changed(result: dict, images: np.ndarray, labels: np.ndarray | None) -> list[str]:
    """One section per distinct set of changes: rows whose per-image changes are the same (the same bytes
    on two runtimes, a Triton copy of an .onnx) share a section that names them all, so no row's changes
    are crowded out by another's repeats. Each section draws the test images changed (the image, the
    reference's and the row's class, the true one), MAX_THUMBNAILS shared fairly between the sections
    (at least MIN_PER_GROUP each); a failing row with no changed image is named too."""
    ref = next((r for r in result["rows"] if r.get("is_reference")), None)
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        if r.get("is_reference") or not r.get("flipped_indices") or not r.get("flipped_predictions"):
            continue
        groups.setdefault((tuple(r["flipped_indices"]), tuple(r["flipped_predictions"])), []).append(r)
    per = max(MIN_PER_GROUP, MAX_THUMBNAILS // max(1, len(groups)))
    out: list[str] = []
    classes = result.get("classes") or [str(d) for d in range(10)]

    def name(k) -> str:  # a class by its name (the digits' names are the digits)
        return html.escape(str(classes[int(k)])) if 0 <= int(k) < len(classes) else str(k)

    h, w = images.shape[1:3] if images.ndim >= 3 else (28, 28)
    scale = max(1, 84 // max(h, w))
    for (indices, predictions), members in groups.items():
        names = "; ".join(f"{html.escape(r['name'])} on {html.escape(r['runtime'])}" for r in members)
        total = max(int(members[0].get("flipped") or 0), len(indices))
        shown = f" (the first {per} drawn)" if total > per else ""
        figures = []
        for idx, pred in list(zip(indices, predictions, strict=False))[:per]:
            truth = f", true {name(labels[idx])}" if labels is not None else ""
            said = _reference_prediction(ref, idx)
            figures.append(f'<figure><img src="{_png(images[idx], scale)}" alt="test image {idx}" '
                           f'width="{w * scale}" height="{h * scale}">'
                           f"<figcaption>#{idx}: reference {name(said) if said != '?' else said} → {name(pred)}{truth}"
                           "</figcaption></figure>")
        out.append(f'<section class="changed"><h3>{names}: {total} test image(s) changed{shown}</h3>'
                   + "".join(figures) + "</section>")
    return out


def _reference_prediction(ref: dict | None, idx: int) -> str:
    preds = (ref or {}).get("predictions")
    return str(preds[idx]) if preds is not None else "?"


def render(result: dict, images: np.ndarray, labels: np.ndarray | None = None,
           reference_predictions: np.ndarray | None = None) -> str:
    """The whole page, as text."""
    if reference_predictions is not None:
        result = {**result, "rows": [dict(r, predictions=reference_predictions.tolist()) if r.get("is_reference")
                                     else r for r in result["rows"]]}
    passed = result["passed"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for r in result["rows"]:
        cls = "fail" if r["status"] == "fail" else "ref" if r.get("is_reference") else ""
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row_cells(r))
        body.append(f'<tr class="{cls}" id="{html.escape(r["id"])}">{cells}</tr>')
    plot = _plot_uri(result)
    changed = _changed(result, images, labels)
    cpu = (result.get("machine") or {}).get("cpu", {}).get("model", "?")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>mnisttk verify: " + ("PASS" if passed else "FAIL") + "</title>", f"<style>{CSS}</style></head><body>",
        f'<h1>mnisttk verify: <span class="{"pass" if passed else "fail"}">{html.escape(verdict(result))}</span></h1>',
        f"<p>{result['n_test']:,} test images on {html.escape(cpu)}; latency at batch 1, throughput at batch "
        f"{result['throughput_batch']} (images per CPU-second), {result['threads']} thread(s); "
        f"{result['seconds']:.1f} s.</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]
    if plot:
        parts.append(f'<h2>Accuracy against latency</h2><img src="{plot}" alt="accuracy against batch-1 latency" '
                     'style="max-width:100%">')
    parts.append("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in _notes(result))
                 + "</ul>")
    if changed:
        parts.append("<h2>Test images the rows changed, one group per distinct set of changes</h2>" + "".join(changed))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(result: dict, images: np.ndarray, labels: np.ndarray | None, reference_predictions: np.ndarray | None,
               path: Path) -> None:
    from toolkit.fsutil import atomic_write_bytes

    atomic_write_bytes(path, render(result, images, labels, reference_predictions).encode("utf-8"))


def render_fleet(fleet: dict, images: np.ndarray, labels: np.ndarray | None,
                 reference_predictions: np.ndarray | None) -> str:
    """`verify --cluster --html`: one page — the fleet's verdict, then per node kind each node's own report
    (its table, plot, notes and changed images, as a local run's page), then the nodes compared."""
    from toolkit.fleet_report import verdict as fleet_verdict

    passed = fleet["passed"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>mnisttk verify on a fleet: " + ("PASS" if passed else "FAIL") + "</title>",
             f"<style>{CSS}</style></head><body>",
             f'<h1>mnisttk verify on a fleet: <span class="{"pass" if passed else "fail"}">'
             f"{html.escape(fleet_verdict(fleet))}</span></h1>",
             f"<p>{html.escape(fleet['cluster'])}: {len(fleet['nodes'])} node(s) in {len(fleet['kinds'])} kind(s), "
             f"{fleet['n_test']:,} test images, {fleet['seconds']:.1f} s.</p>"]
    for k in fleet["kinds"]:
        parts.append(f'<h2>{html.escape(k["kind"])}: <span class="{"pass" if k["passed"] else "fail"}">'
                     f'{"PASS" if k["passed"] else "FAIL"}</span></h2>')
        for n in (n for n in fleet["nodes"] if n["kind"] == k["kind"]):
            parts.append(f"<h3>node {html.escape(n['id'][:12])} at {html.escape(str(n.get('address')))}</h3>")
            if n["status"] != "ok":
                parts.append(f'<p class="fail">{html.escape(n["status"].upper())}: {html.escape(str(n.get("reason")))}</p>')
                continue
            page = render(n["result"], images, labels, reference_predictions)
            body = page.split("<body>", 1)[1].rsplit("</body>", 1)[0]
            parts.append(f'<section class="node">{body.replace("<h1>", "<h4>").replace("</h1>", "</h4>")}</section>')
    comparison = fleet.get("comparison")
    if comparison:
        from toolkit.compare import format_markdown as compare_markdown

        parts.append("<h2>The nodes' outputs, image by image, against the first node's</h2>"
                     f"<pre>{html.escape(compare_markdown(comparison))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
