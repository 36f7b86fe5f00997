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
    assert "#5: ONNX int8 on ORT CPU<br>reference 3 → 7, true 5" in text
