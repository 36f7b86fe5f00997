#!/usr/bin/env python3
"""`make browser-check`: the HTML report in a real headless browser (Debian's chromium). Writes
`verify --html` for an export (exported/ by default, as `make demo` leaves it), takes a screenshot,
and checks that the verdict and the table are visible: the heading's colour (green PASS, red FAIL)
in the top band, and the table's text below it. Exit 0 when they are, 1 when not, 2 when there is
no chromium (`apt-get install chromium`). Not part of `make test`: it needs a browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "exported"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("browser-check: no chromium here (apt-get install chromium)")
        return 2
    with tempfile.TemporaryDirectory(prefix="mnisttk-browser-") as tmp:
        page, shot = Path(tmp) / "report.html", Path(tmp) / "report.png"
        r = subprocess.run([sys.executable, "-m", "toolkit", "verify", "--dir", str(folder), "--rounds", "1",
                            "--html", str(page)], capture_output=True, text=True)
        if not page.is_file():
            print(f"browser-check: verify wrote no page ({(r.stderr or r.stdout).strip().splitlines()[-1:]})")
            return 1
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp}/profile", "--window-size=1400,1800", f"--screenshot={shot}",
                        page.as_uri()], capture_output=True, timeout=120)
        from PIL import Image

        img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        top, table = img[:80], img[120:900]
        green = ((top[..., 1] > 80) & (top[..., 0] < 60) & (top[..., 2] < 60)).sum()
        red = ((top[..., 0] > 140) & (top[..., 1] < 60) & (top[..., 2] < 60)).sum()
        dark = (table.max(axis=2) < 90).mean()
        ok = (green > 200 or red > 200) and dark > 0.01
        verdict = "PASS (green)" if green > red else "FAIL (red)"
        print(f"browser-check: {shot.name}: heading {verdict}, {dark:.1%} of the table band is text: "
              + ("visible" if ok else "NOT VISIBLE"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
