"""Training that a busy machine does not stall: `train --threads N`, and by default the cores other
processes leave idle at start, said in the log and the JSON."""

import json

from helpers import run


def test_threads_asked_for_are_used_and_recorded(tiny_dir, tmp_path):
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--checkpoint", tmp_path / "m.pt",
            "--device", "cpu", "--threads", 1, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["threads"] == 1 and doc["threads_chosen"] == "1 (asked for)"
    assert "CPU threads: 1 (asked for)" in r.stderr


def test_by_default_the_idle_cores_at_start(tiny_dir, tmp_path, monkeypatch):
    from toolkit import timing

    monkeypatch.setattr(timing, "sample_idle_cores", lambda seconds=0.3: (1, 1.0))  # one of two cores busy
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--checkpoint", tmp_path / "m.pt",
            "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["threads"] == 1 and "the ones idle at start (1.0 busy with other processes" in doc["threads_chosen"]


def test_a_thread_count_past_the_cores_is_a_usage_error(tiny_dir, tmp_path):
    import os

    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--checkpoint", tmp_path / "m.pt", "--threads",
            (os.cpu_count() or 1) + 1)
    assert r.exit_code == 2 and "--threads" in r.output
