"""`verify --html FILE`: one self-contained page — the verdict, every row of the table, the plot, the
notes and the changed test images, all embedded; nothing loaded from anywhere."""

import re
from html.parser import HTMLParser

import numpy as np
from helpers import LOOSE, run


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.row_ids, self.srcs, self.links, self.figures, self.h1 = [], [], [], 0, ""
        self._in_h1 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("id"):
            self.row_ids.append(a["id"])
        if tag in ("img", "script", "iframe") and "src" in a:
            self.srcs.append(a["src"])
        if tag == "link" or (tag == "a" and "href" in a):
            self.links.append(a.get("href"))
        self.figures += tag == "figure"
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag):
        self._in_h1 = self._in_h1 and tag != "h1"

    def handle_data(self, data):
        if self._in_h1:
            self.h1 += data


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_verify_writes_a_self_contained_page_with_every_row(supplier, tiny_export, tmp_path):
    out = tmp_path / "report.html"
    r = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE, "--json",
            tmp_path / "v.json", "--html", out)
    assert r.exit_code == 0, r.output
    import json

    rows = [x["id"] for x in json.loads((tmp_path / "v.json").read_text())["rows"]]
    text = out.read_text()
    page = parse(text)
    assert page.row_ids == rows
    assert "PASS" in page.h1
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs)  # the plot, embedded
    assert not page.links and not re.search(r"(src|href)=\"(https?:|//|/)", text)


def test_the_changed_test_images_are_drawn_with_both_predictions(monkeypatch):
    from toolkit import html_report
    from toolkit.html_report import MAX_THUMBNAILS, render

    monkeypatch.setattr(html_report, "_plot_uri", lambda result: None)  # a made-up result has no timings to plot
    images = np.zeros((100, 28, 28), np.uint8)
    row = {"id": "onnx-int8@ort-cpu", "name": "ONNX int8", "runtime": "ORT CPU", "status": "ok", "precision": "int8",
           "flipped_indices": list(range(60)), "flipped_predictions": [7] * 60}
    ref = {"id": "eager-fp32@npz", "name": "PyTorch fp32", "runtime": "reference.npz", "status": "ok",
           "is_reference": True, "precision": "fp32"}
    result = {"rows": [ref, row], "passed": False, "failed_rows": ["ONNX int8 on ORT CPU"], "n_test": 100,
              "throughput_batch": 256, "threads": 1, "seconds": 1.0, "artifacts_listed": 1, "targets": ["onnx-int8"],
              "targets_checked": ["onnx-int8"], "gates": {}, "machine": {"cpu": {"model": "test"}}}
    text = render(result, images, np.arange(100) % 10, np.full(100, 3))
    page = parse(text)
    assert page.figures == MAX_THUMBNAILS and "FAIL" in page.h1
    assert "ONNX int8 on ORT CPU: 60 test image(s) changed (the first 48 drawn)" in text
    assert "#5: reference 3 → 7, true 5" in text


def test_rows_with_the_same_changes_share_a_group_and_every_row_shows_its_own(monkeypatch):
    """The first 48 slots went to the same images repeated for rows of the same bytes (TorchScript/ONNX/
    .ort/Triton int8), so no LiteRT or OpenVINO IR row showed its changed images."""
    from toolkit import html_report
    from toolkit.html_report import MIN_PER_GROUP, render

    monkeypatch.setattr(html_report, "_plot_uri", lambda result: None)
    images = np.zeros((100, 28, 28), np.uint8)

    def row(rid, name, runtime, indices, pred):
        return {"id": rid, "name": name, "runtime": runtime, "status": "ok", "precision": "int8", "flipped":
                len(indices), "flipped_indices": indices, "flipped_predictions": [pred] * len(indices)}

    same = list(range(30))
    rows = [row("onnx-int8@ort-cpu", "ONNX int8", "ORT CPU", same, 7),
            row("ort-int8@ort-cpu", "ORT format int8", "ORT CPU", same, 7),
            row("triton-int8@ort-cpu", "Triton int8", "ORT CPU", same, 7),
            *[row(f"r{k}@x", f"Row {k}", "R", list(range(40 + k, 60 + k)), k) for k in range(9)],
            row("tflite-int8@litert", "LiteRT int8", "LiteRT XNNPACK", [90, 91], 1)]
    ref = {"id": "eager-fp32@npz", "name": "PyTorch fp32", "runtime": "reference.npz", "status": "ok",
           "is_reference": True, "precision": "fp32"}
    result = {"rows": [ref, *rows], "passed": True, "failed_rows": [], "n_test": 100, "throughput_batch": 256,
              "threads": 1, "seconds": 1.0, "artifacts_listed": 13, "targets": [], "targets_checked": [], "gates": {},
              "machine": {"cpu": {"model": "test"}}}
    text = render(result, images, np.arange(100) % 10, np.full(100, 3))
    assert text.count('<section class="changed">') == 11  # the three of the same changes in one group
    assert "ONNX int8 on ORT CPU; ORT format int8 on ORT CPU; Triton int8 on ORT CPU: 30 test image(s) changed" in text
    assert "LiteRT int8 on LiteRT XNNPACK: 2 test image(s) changed" in text and "#91: reference 3 → 1" in text
    assert parse(text).figures == MIN_PER_GROUP * 10 + 2  # 11 groups: each at least MIN_PER_GROUP (LiteRT's 2)
