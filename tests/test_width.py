"""Every default text output fits 120 columns: each verb's help, and what verify, compare, inspect,
data, env and predict print on a real (tiny) export."""

import numpy as np
import pytest
from helpers import LOOSE, run

from toolkit.cli import main
from toolkit.width import WIDTH, fit

VERBS = sorted(main.commands)


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


@pytest.mark.parametrize("verb", ["", *VERBS])
def test_every_verbs_help_fits(verb):
    r = run(*([verb] if verb else []), "-h")
    assert r.exit_code == 0 and not too_wide(r.output), too_wide(r.output)


def test_what_the_verbs_print_fits(supplier, tiny_export, tmp_path, monkeypatch):
    data = tiny_export["data"]
    outputs = []
    for name in ("a", "b"):
        r = run("verify", "--dir", supplier, "--data-dir", data, "--no-torch", *LOOSE, "--save-outputs",
                tmp_path / f"{name}.json")
        assert r.exit_code == 0, r.output
        outputs.append(r.stdout)
    r = run("compare", tmp_path / "a.json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    outputs.append(r.stdout)
    r = run("inspect", "--dir", supplier, "--data-dir", data, "--repeats", "2", "--images", "40")
    assert r.exit_code == 0, r.output
    outputs.append(r.stdout)
    outputs += [run("data", "--data-dir", data).output, run("env").output]
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    np.save(tmp_path / "d.npy", digit)
    monkeypatch.chdir(tmp_path)  # one line per file, named as the user named it
    outputs.append(run("predict", "d.npy", "--model", supplier / "cnn_int8.onnx").output)
    for text in outputs:
        assert text.strip() and not too_wide(text), too_wide(text)


def test_fit_wraps_only_what_is_too_wide():
    short = "a line that fits"
    long = "  notes: " + " ".join(f"word{i}" for i in range(60))
    out = fit(f"{short}\n{long}").splitlines()
    assert out[0] == short and all(len(x) <= WIDTH for x in out) and out[2].startswith("      ")
    assert " ".join(x.strip() for x in out[1:]) == long.strip()
