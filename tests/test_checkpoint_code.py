"""A checkpoint never decides what code runs. `torch.load(weights_only=True)` keeps a checkpoint from
running code while it is read; these tests keep its *model reference* from doing the same afterwards:
a user model's reference is followed only when this user's mnisttk signed it and its source is
unchanged, or when the user names the model again with --arch; what is called must be defined in the
named file or module; a built-in's arguments are checked against their schema before anything is built."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_arrays, write_idx
from helpers import one_error, run

MODELS = Path(__file__).parent / "models"


def forged(base: Path, dest: Path, ref: dict, arch: str) -> Path:
    """The tiny export's checkpoint with its model reference replaced, as a supplier could write it."""
    ckpt = torch.load(base, weights_only=True)
    ckpt["arch"], ckpt["arch_ref"] = arch, ref
    torch.save(ckpt, dest)
    return dest


def export(ckpt: Path, out: Path, data, *extra):
    return run("export", "--checkpoint", ckpt, "--dir", out, "--data-dir", data, "--targets", "onnx", *extra)


PWN = {"args": ["touch", "PWNED"]}


@pytest.mark.parametrize("case", ["module", "stdlib-file", "forged-mac", "relative-file"])
def test_a_checkpoint_naming_code_runs_nothing(tiny_export, tmp_path, monkeypatch, case):
    """The critical finding: `{kind: module, path: subprocess, name: run, args: {args: [touch, PWNED]}}`
    made export create PWNED. A file reference to the interpreter's own subprocess.py with its public
    SHA-256, a made-up MAC and a relative path are refused the same way, before any import."""
    monkeypatch.chdir(tmp_path)
    stdlib = Path(subprocess.__file__)
    sha = hashlib.sha256(stdlib.read_bytes()).hexdigest()
    ref = {"module": {"kind": "module", "path": "subprocess", "name": "run", "sha256": None, "args": PWN},
           "stdlib-file": {"kind": "file", "path": str(stdlib), "name": "run", "sha256": sha, "args": PWN},
           "forged-mac": {"kind": "module", "path": "subprocess", "name": "run", "sha256": None, "args": PWN,
                          "mac": "0" * 64},
           "relative-file": {"kind": "file", "path": "evil.py", "name": "run", "sha256": "0" * 64, "args": PWN}}[case]
    (tmp_path / "evil.py").write_text("import subprocess\ndef run(**kw):\n    subprocess.run(['touch', 'PWNED'])\n")
    ckpt = forged(tiny_export["out"] / "cnn.pt", tmp_path / "evil.pt", ref, "run")
    err = one_error(export(ckpt, tmp_path / "out", tiny_export["data"]))
    assert not (tmp_path / "PWNED").exists()
    if case == "relative-file":
        assert "'arch_ref' is malformed" in err
    else:
        assert "not signed by this user's key" in err and "--arch" in err, err


def test_a_signed_reference_still_calls_only_what_the_file_defines(tiny_export, tmp_path, monkeypatch):
    """Signed by this user (as train signs) and hash-checked, a reference to a name the file only
    imports (os.system) is not called: what is called must be defined in the file, and the error lists
    what is."""
    from toolkit import arch

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "net.py"
    src.write_text("from subprocess import run as Net\n\ndef make():\n    return None\n")
    ref = arch.ArchRef("file", "Net", str(src), hashlib.sha256(src.read_bytes()).hexdigest(), PWN).record()
    assert ref["mac"] and arch.from_record(ref, "x").signed
    ckpt = forged(tiny_export["out"] / "cnn.pt", tmp_path / "net.pt", ref, "net")
    err = one_error(export(ckpt, tmp_path / "out", tiny_export["data"]))
    assert "Net is imported into" in err and "defined there: make" in err, err
    assert not (tmp_path / "PWNED").exists()
    ref["args"] = {"args": ["touch", "OTHER"]}  # a signed reference edited afterwards: no longer signed
    assert not arch.from_record(ref, "x").signed


def test_a_module_reference_is_hash_checked_like_a_file(tiny_data, tmp_path, monkeypatch):
    """train --arch package.module:NAME records the module's SHA-256 and signs it: export follows it
    while the module is unchanged, refuses it once edited (naming --arch), and takes it when named again."""
    pkg = tmp_path / "usermods"
    pkg.mkdir()
    shutil.copy(MODELS / "gelu_pool.py", pkg / "gelunet_mod.py")
    monkeypatch.syspath_prepend(str(pkg))
    ckpt = tmp_path / "out" / "m.pt"
    r = run("train", "--arch", "gelunet_mod:GeluNet", "--data-dir", tiny_data, "--epochs", "1", "--device", "cpu",
            "--checkpoint", ckpt, "--quiet")
    assert r.exit_code == 0, r.output
    recorded = torch.load(ckpt, weights_only=True)["arch_ref"]
    assert recorded["sha256"] == hashlib.sha256((pkg / "gelunet_mod.py").read_bytes()).hexdigest()
    assert export(ckpt, tmp_path / "out", tiny_data).exit_code == 0
    (pkg / "gelunet_mod.py").write_text((pkg / "gelunet_mod.py").read_text() + "\n# edited\n")
    err = one_error(export(ckpt, tmp_path / "out", tiny_data))
    assert "module gelunet_mod changed since training" in err and "--arch gelunet_mod:GeluNet" in err
    sys.modules.pop("gelunet_mod", None)
    assert export(ckpt, tmp_path / "out", tiny_data, "--arch", "gelunet_mod:GeluNet").exit_code == 0


def test_a_checkpoint_trained_by_another_user_needs_arch_named_again(tiny_data, tmp_path, monkeypatch):
    """The same checkpoint under another user's key (another XDG_STATE_HOME): refused with the option
    to give; with --arch naming the file it exports."""
    src = tmp_path / "net.py"
    shutil.copy(MODELS / "gelu_pool.py", src)
    ckpt = tmp_path / "out" / "net.pt"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "trainer"))
    r = run("train", "--arch", f"{src}:GeluNet", "--data-dir", tiny_data, "--epochs", "1", "--device", "cpu",
            "--checkpoint", ckpt, "--quiet")
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "someone-else"))
    err = one_error(export(ckpt, tmp_path / "out", tiny_data))
    assert "pass --arch FILE.py:GeluNet" in err, err
    assert export(ckpt, tmp_path / "out", tiny_data, "--arch", f"{src}:GeluNet").exit_code == 0


@pytest.fixture
def tiny_data(tmp_path):
    return write_idx(tmp_path / "data", synthetic_arrays())


@pytest.mark.parametrize("args,message", [
    ({"bogus": 1}, "built-in cnn takes no argument 'bogus' (it takes: in_channels)"),
    ({"in_channels": 65}, "built-in cnn's in_channels must be an integer from 1 to 64"),
])
def test_a_built_in_models_arguments_are_checked_before_anything_is_built(exported, tiny_export, args, message):
    """A supplier's cnn.pt recording the built-in with extra arguments: `{bogus: 1}` was a traceback in
    verify; an oversized one (mlp [60000, 60000]: a 14.4 GB request) is refused by the same schema."""
    path = exported / "cnn.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch_ref"] = {"kind": "builtin", "name": "cnn", "path": None, "sha256": None, "args": args}
    torch.save(ckpt, path)
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["checkpoint"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (exported / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--rounds", "1",
            "--skip-runtime", "openvino", "--json", "-")
    assert "Traceback" not in r.output
    assert message in r.output, r.output


@pytest.mark.parametrize("hidden,ok", [([4096, 4096], True), ([4097, 64], False), ([60000, 60000], False),
                                       ([0, 64], False), ([True, 64], False), ([64], False)])
def test_the_mlp_schema_holds_at_its_bound_and_one_past(hidden, ok):
    from toolkit import arch
    from toolkit.errors import CheckpointError

    if ok:
        arch.check_builtin_args("mlp", {"hidden": hidden}, "x")
    else:
        with pytest.raises(CheckpointError, match="hidden must be a list of 2 integers from 1 to 4096"):
            arch.check_builtin_args("mlp", {"hidden": hidden}, "x")


@pytest.mark.parametrize("text,message", [
    ('{"x": NaN}', "NaN is not a number JSON allows"),
    ('{"x": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"x": ' + "[" * 2040 + "]" * 2040 + "}", "nested deeper than 16 levels"),
    ('{"x": ' + "[" * 17 + "]" * 17 + "}", "nested deeper than 16 levels"),
])
def test_arch_args_that_are_not_plain_settings_are_refused_at_parse(text, message):
    from toolkit import arch
    from toolkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"--arch-args: .*{message}"):
        arch.parse_args(text)
    arch.parse_args('{"x": ' + "[" * 15 + "]" * 15 + "}")  # 16 levels with the object: at the bound


@pytest.mark.parametrize("body,message", [
    ("import sys\nsys.exit(0)\n\nclass Net:\n    pass\n", "SystemExit"),
    ("from torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.fc = nn.Linear(784, 10)\n    def forward(self, x):\n        return self.fc(x.flatten(1))[:2]\n",
     "returns [2, 10] for a 3×1×28×28 input"),
    ("from torch import nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return x.flatten(1)[:, :10]\n",
     "has no parameters"),
    ("import torch\nfrom torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.fc = nn.Linear(784, 10)\n    def forward(self, x):\n        return self.fc(x.flatten(1)) * float('nan')\n",
     "returns NaN or infinite logits"),
    ("import sys\nfrom torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.fc = nn.Linear(784, 10)\n    def forward(self, x):\n        if self.training:\n"
     "            sys.exit(0)\n        return self.fc(x.flatten(1))\n", "called sys.exit(0) during training"),
])
def test_a_model_file_that_misbehaves_is_one_line_and_no_checkpoint(tiny_data, tmp_path, body, message):
    (tmp_path / "m.py").write_text(body)
    r = run("train", "--arch", f"{tmp_path / 'm.py'}:Net", "--data-dir", tiny_data, "--epochs", "1",
            "--device", "cpu", "--checkpoint", tmp_path / "m.pt")
    assert message in one_error(r)
    assert not (tmp_path / "m.pt").exists()


def test_processes_making_the_key_at_once_all_get_the_same_whole_key(tmp_path):
    """Several trainings starting together on a new machine each sign with the key: one is written whole
    and linked into place, the others read that one (never a half-written file, which would leave their
    checkpoints unsigned)."""
    import os

    code = "from toolkit import userkey; print(userkey.user_key(create=True).hex())"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(next(iter(keys))) == 64, keys
    folder = tmp_path / "state" / "mnisttk"
    assert [p.name for p in folder.iterdir()] == ["journal.key"]  # no private copy left behind
    assert (folder / "journal.key").stat().st_mode & 0o777 == 0o600
