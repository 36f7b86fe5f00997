import json
import re
from pathlib import Path

import pytest
import torch
from helpers import run

from toolkit.cli import main
from toolkit.targets import FORMATS


def test_every_command_has_help_and_is_in_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert cmd.help and "Example" in cmd.help, name
        assert f"mnisttk {name}" in readme, name
        assert run(name, "--help").exit_code == 0


def test_data_summary_json(tiny_dir):
    r = run("data", "--data-dir", tiny_dir, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["splits"]["train"]["images"] == 120
    assert sum(info["splits"]["test"]["class_counts"]) == 40


def test_train_writes_loadable_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "m.pt"
    r = run("train", "--data-dir", tiny_dir, "--epochs", 2, "--batch-size", 20, "--out", out, "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "TEST" in r.stdout and "train" in r.stdout
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["arch"] == "cnn" and ckpt["recipe"]["batch_size"] == 20
    assert set(ckpt["metrics"]) == {"train", "test"}
    assert {"train", "test"} <= set(ckpt["data_sha256"]) and "torch" in ckpt["versions"]
    assert not list(tmp_path.glob(".m.pt.*"))  # no temp file left behind


def test_train_corrupt_data_one_line(tiny_dir, tmp_path):
    (tiny_dir / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    r = run("train", "--data-dir", tiny_dir, "--out", tmp_path / "m.pt")
    assert r.exit_code == 1
    assert re.fullmatch(r"Error: .*train-images-idx3-ubyte.gz: cannot read .*\n", r.stderr)
    assert not (tmp_path / "m.pt").exists()


def test_train_keeps_previous_checkpoint_on_failure(tiny_dir, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"previous")
    (tiny_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    r = run("train", "--data-dir", tiny_dir, "--out", out)
    assert r.exit_code == 1 and "missing t10k-labels-idx1-ubyte" in r.stderr
    assert out.read_bytes() == b"previous"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_clear_error(tiny_dir):
    r = run("train", "--data-dir", tiny_dir, "--device", "cuda")
    assert r.exit_code == 1 and "no CUDA GPU" in r.stderr


def test_bad_options_are_usage_errors(tiny_dir):
    assert run("train", "--epochs", 0).exit_code == 2
    r = run("train", "--arch", "resnet")  # neither a built-in nor FILE.py:NAME: one line, before any data is read
    assert r.exit_code == 1 and "expected cnn, mlp, FILE.py:NAME or package.module:NAME" in r.stderr


def test_unwritable_output(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("train", "--data-dir", tiny_dir, "--out", blocker / "m.pt")
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot write to")


def test_pipeline_runs_all_three_steps(tiny_dir, tmp_path):
    out = tmp_path / "exp"
    # 40 synthetic test images: the int8 gates are loosened, so every gate that remains must hold
    # the fast targets (every target's export and rows: test_export's all_targets; the default set: below)
    r = run("pipeline", "--epochs", 1, "--device", "cpu", "--data-dir", tiny_dir, "--out", out, "--targets", "onnx,ort",
            "--calibration-size", 100, "--int8-max-drop", 100, "--int8-min-agreement", 0, "--seed", 1,
            "--int8-min-ood-agreement", 0)
    assert r.exit_code == 0, r.output
    for name in ("cnn.pt", "cnn_fp32.onnx", "cnn_int8.onnx", "manifest.json", "report.md", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and sorted(report["targets_checked"]) == sorted(report["targets"])
    assert sorted(report["targets"]) == ["onnx-fp32", "onnx-int8", "ort-fp32", "ort-int8"]
    assert torch.load(out / "cnn.pt", weights_only=True)["seed"] == 1
    # a strict gate on the same artifacts fails, and says which row
    r = run("verify", "--dir", out, "--data-dir", tiny_dir, "--fp32-atol", 0)
    assert r.exit_code == 1 and "FAIL:" in r.stdout


def test_pipeline_leaves_out_a_target_whose_extra_is_missing(tiny_dir, tmp_path, monkeypatch):
    import toolkit.exporters as exporters

    real = exporters.missing_dependency
    monkeypatch.setattr(exporters, "missing_dependency",
                        lambda fmt: "target executorch needs executorch, which is not installed" if fmt == "executorch"
                        else real(fmt))
    out = tmp_path / "exp"
    r = run("pipeline", "--epochs", 1, "--device", "cpu", "--data-dir", tiny_dir, "--out", out,
            "--calibration-size", 100, "--int8-max-drop", 100, "--int8-min-agreement", 0, "--int8-min-ood-agreement", 0)
    assert r.exit_code == 0, r.output
    assert "pipeline: skipping target executorch needs executorch" in r.stderr
    targets = json.loads((out / "manifest.json").read_text())["targets"]
    assert "executorch-int8" not in targets and "tflite-int8" in targets and len(targets) == 2 * (len(FORMATS) - 1)


def test_version_and_module_entry_point():
    import subprocess
    import sys

    from toolkit import __version__

    r = subprocess.run([sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout


def test_data_grid_png(tiny_dir, tmp_path):
    from PIL import Image

    r = run("data", "--data-dir", tiny_dir, "--grid", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "grid.png") as img:
        assert img.format == "PNG" and img.size[0] > 280


def test_progress_bars_only_on_a_terminal(tiny_dir, tmp_path):
    out = tmp_path / "m.pt"
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stderr and "epoch  1/1" in r.stderr  # stderr is not a terminal here
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--out", out, "--device", "cpu",
            "--progress")
    assert r.exit_code == 0 and "\r" in r.stderr  # asked for: drawn anyway


@pytest.mark.parametrize("lr,needle", [("inf", "positive, finite"), ("1e30", "training diverged")])
def test_diverged_training_fails_and_writes_nothing(tiny_dir, tmp_path, lr, needle):
    out = tmp_path / "m.pt"
    out.write_bytes(b"previous")
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--out", out, "--device", "cpu",
            "--lr", lr)
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1 and needle in r.stderr, r.output
    assert out.read_bytes() == b"previous"


def test_an_edge_install_says_which_extra_train_needs(tiny_dir, tmp_path):
    """Without the [train] extra (torch blocked), train and export are one line naming the extra."""
    import subprocess
    import sys
    import textwrap

    from helpers import BLOCK_TORCH

    (tmp_path / "given.pt").write_bytes(b"a checkpoint")
    (tmp_path / "empty").mkdir()
    (tmp_path / "net.py").write_text("import torch\n\nclass ConvBN(torch.nn.Module):\n    pass\n\n"
                                     "def make():\n    return ConvBN()\n")
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from click.testing import CliRunner
        from toolkit.cli import main
        for args in (["train", "--data-dir", r"{tiny_dir}", "--out", r"{tmp_path / 'm.pt'}"],
                     ["export", "--checkpoint", r"{tmp_path / 'given.pt'}", "--out", r"{tmp_path}"]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
            assert r.stderr.count("Error:") == 1, r.stderr
            assert "needs the training stack" in r.stderr and "mnisttk[train]" in r.stderr, r.stderr
        # a checkpoint that is not there, and a model file without the name asked for, are said before
        # torch is even imported (cheap checks first)
        r = CliRunner().invoke(main, ["export", "--checkpoint", r"{tmp_path / 'none.pt'}", "--out", r"{tmp_path}"])
        assert r.exit_code == 1 and "none.pt: no such checkpoint" in r.stderr, r.stderr
        r = CliRunner().invoke(main, ["train", "--data-dir", r"{tmp_path / 'empty'}", "--out", r"{tmp_path / 'm.pt'}"])
        assert r.exit_code == 1 and "holds no data set mnisttk reads" in r.stderr, r.stderr
        r = CliRunner().invoke(main, ["train", "--arch", r"{tmp_path / 'net.py'}:ConvBn", "--data-dir", r"{tiny_dir}"])
        assert r.exit_code == 1 and "ConvBn is not a class or function in net.py (defined there: ConvBN, make)" \
            in r.stderr, r.stderr
        print("EDGE OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "EDGE OK" in r.stdout, r.stdout + r.stderr


def test_readme_report_is_the_committed_one():
    """The README's report and its prose figures are generated from docs/verify-report.{txt,json}."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("readme_report", root / "scripts" / "readme_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = json.loads((root / "docs" / "verify-report.json").read_text())
    expected = mod.block((root / "docs" / "verify-report.txt").read_text(), report)
    assert expected in (root / "README.md").read_text(), "run scripts/readme_report.py"
    assert report["passed"] and "PASS" in (root / "docs" / "verify-report.txt").read_text()


def test_one_vocabulary_old_spellings_hidden_and_quiet(tiny_dir, tmp_path):
    helps = {name: run(name, "--help").stdout for name in ("train", "export", "verify", "predict", "pipeline")}
    assert "--checkpoint" in helps["train"] and "--out" not in helps["train"]
    assert "--dir" in helps["export"] and "--calibration-seed" in helps["export"] and "--out" not in helps["export"]
    assert "--device" in helps["verify"] and "--runtime" not in helps["verify"]
    assert "--throughput-batch" in helps["verify"] and "--batch-size" not in helps["verify"]
    assert "--device" in helps["predict"] and "--provider" not in helps["predict"]
    for name, text in helps.items():
        assert "-q, --quiet" in text, name
    import click

    for name, cmd in main.commands.items():  # every visible option has help text
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, (name, param.name)
    summaries = run("--help").stdout
    assert "..." not in summaries.split("Commands:")[1]  # short help is written, not cut off
    # the new name and the old one do the same; -q silences the logs
    ckpt = tmp_path / "m.pt"
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--checkpoint", ckpt, "-q", "--device", "cpu")
    assert r.exit_code == 0 and ckpt.is_file() and r.stderr == ""
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--out", tmp_path / "old.pt", "--device", "cpu")
    assert r.exit_code == 0 and (tmp_path / "old.pt").is_file() and "epoch" in r.stderr


def test_readme_performance_tables_are_the_committed_benchmark():
    """docs/performance.md embeds benchmarks/results/latest.md, the README targets.md, as `make bench` wrote them."""
    root = Path(__file__).resolve().parent.parent
    latest = (root / "benchmarks" / "results" / "latest.md").read_text().strip()
    assert latest in (root / "docs" / "performance.md").read_text(), "paste benchmarks/results/latest.md into docs/performance.md"
    targets = (root / "benchmarks" / "results" / "targets.md").read_text().strip()
    assert targets in (root / "README.md").read_text(), "paste benchmarks/results/targets.md into the README"
