import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import BLOCK_TORCH, run, third_party_check
from PIL import Image

from toolkit.data import load_mnist
from toolkit.errors import ImageError
from toolkit.predict import load_gray, read_pgm, to_mnist


@pytest.fixture
def digits(tiny_export, tmp_path):
    data = load_mnist(tiny_export["data"], download=False)
    img, label = data.test_images[0], int(data.test_labels[0])
    files = {}
    big = Image.fromarray(255 - img).resize((280, 200))  # dark on light, not square, not 28×28
    big.convert("RGB").save(tmp_path / "d.png")
    big.convert("RGB").save(tmp_path / "d.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "d.pgm")
    np.save(tmp_path / "d.npy", img)
    np.save(tmp_path / "f.npy", img.astype(np.float32)[None] / 255)
    files.update(png=tmp_path / "d.png", jpg=tmp_path / "d.jpg", pgm=tmp_path / "d.pgm", npy=tmp_path / "d.npy",
                 fnpy=tmp_path / "f.npy")
    return files, label, data


def test_predict_all_formats(digits, tiny_export):
    files, label, _ = digits
    r = run("predict", *files.values(), "--model", tiny_export["out"] / "cnn_int8.onnx", "--accept-all", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1 and out["model"].endswith("cnn_int8.onnx") and len(out["model_sha256"]) == 64
    results = out["results"]
    assert len(results) == 5 and all(0 <= x["digit"] <= 9 and 0 < x["probability"] <= 1 for x in results)
    # the exact 28×28 inputs (npy, float npy, pgm) are the test image itself: same answer
    same = {x["digit"] for x in results if x["file"].endswith((".npy", ".pgm"))}
    assert len(same) == 1


def test_preprocessing_inverts_and_centres(digits):
    files, _, data = digits
    x = to_mnist(load_gray(files["png"]))
    assert x.shape == (28, 28) and x.dtype == np.uint8
    assert x[0].mean() < 10 and x.max() > 200  # light digit on dark, like MNIST
    ys, xs = np.nonzero(x > 50)
    assert 10 <= ys.mean() <= 18 and 10 <= xs.mean() <= 18  # centred
    np.testing.assert_array_equal(to_mnist(load_gray(files["npy"]), as_is=True), data.test_images[0])


def test_bad_files_get_one_line_each_and_others_still_predicted(digits, tiny_export, tmp_path):
    files, _, _ = digits
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "trunc.png").write_bytes(files["png"].read_bytes()[:200])
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    np.save(tmp_path / "shape.npy", np.zeros((3, 28, 28)))
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 Mpx, a few KB on disk
    bad = ["text.png", "trunc.png", "nan.npy", "shape.npy", "bomb.png", "missing.png"]
    r = run("predict", files["pgm"], *[tmp_path / b for b in bad], "--model", tiny_export["out"] / "cnn_int8.onnx")
    assert r.exit_code == 1
    assert r.stdout.count("\n") == 1 and str(files["pgm"]) in r.stdout
    errors = r.stderr.strip().splitlines()
    assert len(errors) == len(bad) and all(e.startswith("Error: ") for e in errors)
    joined = "\n".join(errors)
    for needle in ("not a PNG, JPEG", "truncated", "NaN", "shape (3, 28, 28)", "too large", "no such file"):
        assert needle in joined, needle


def test_pgm_ascii_and_16bit():
    ascii_pgm = b"P2\n# comment\n2 2\n15\n0 15\n15 0\n"
    np.testing.assert_array_equal(read_pgm(ascii_pgm, "a"), [[0, 255], [255, 0]])
    p16 = b"P5 2 1 65535\n" + np.array([0, 65535], ">u2").tobytes()
    np.testing.assert_array_equal(read_pgm(p16, "b"), [[0, 255]])
    with pytest.raises(ImageError, match="truncated"):
        read_pgm(b"P5 4 4 255\n\x00\x00", "c")


def test_missing_model_is_clear(digits, tmp_path):
    files, _, _ = digits
    r = run("predict", files["png"], "--model", tmp_path / "none.onnx")
    assert r.exit_code == 1 and "no such model file" in r.stderr


def test_predict_never_imports_torch(digits, tiny_export):
    files, _, _ = digits
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from click.testing import CliRunner
        from toolkit.cli import main
        r = CliRunner().invoke(main, ["predict", r"{files['png']}", r"{files['npy']}", "--model",
                                      r"{tiny_export['out'] / 'cnn_int8.onnx'}"])
        assert r.exit_code in (0, 3), r.output  # the not-a-digit rule ran too (3: it rejected an image)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    """) + third_party_check({"click", "numpy", "onnxruntime", "PIL"}) + textwrap.dedent("""
        print("TORCH-FREE OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TORCH-FREE OK" in r.stdout, r.stdout + r.stderr


def test_folders_recursive_and_the_preprocessed_images(digits, tiny_export, tmp_path):
    files, _, _ = digits
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    import shutil

    shutil.copy(files["png"], folder / "a.png")
    shutil.copy(files["npy"], folder / "sub" / "b.npy")
    (folder / "notes.txt").write_text("not an image: skipped by suffix")
    model = tiny_export["out"] / "cnn_int8.onnx"
    r = run("predict", folder, "--model", model, "--accept-all", "--json")
    assert r.exit_code == 0, r.output
    assert [x["file"] for x in json.loads(r.stdout)["results"]] == [str(folder / "a.png")]
    seen = tmp_path / "seen"
    r = run("predict", folder, "--recursive", "--model", model, "--accept-all", "--json", "--save-preprocessed", seen)
    results = json.loads(r.stdout)["results"]
    assert r.exit_code == 0 and [x["file"] for x in results] == [str(folder / "a.png"), str(folder / "sub" / "b.npy")]
    for x in results:
        fed = np.asarray(Image.open(x["preprocessed"]))
        assert fed.shape == (28, 28) and fed.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(Image.open(results[1]["preprocessed"])), to_mnist(load_gray(files["npy"])))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("predict", empty, "--model", model)
    assert r.exit_code == 1 and "no images in this folder" in r.stderr


def test_uneven_lighting_is_taken_out(real_mnist, real_export):
    """Dark ink on paper lit from 35% to 100% across the page: a global threshold takes the shadow
    for ink; the local background estimate does not."""
    from toolkit.predict import resize
    from toolkit.runtimes.ort_session import Model

    rng = np.random.default_rng(0)
    images, labels = real_mnist.test_images[:100], real_mnist.test_labels[:100]

    def scan(im):
        ink = resize(im.astype(np.float64), 180, 150) / 255
        light = np.linspace(0.35, 1.0, 150)[None, :].repeat(180, 0)
        return np.clip(np.rint(255 * light * (1 - 0.85 * ink) + rng.normal(0, 3, ink.shape)), 0, 255).astype(np.uint8)

    x = np.stack([to_mnist(scan(im)) for im in images])
    acc = float((Model(real_export / "cnn_int8.onnx").logits(x).argmax(1) == labels).mean())
    assert acc >= 0.85, acc  # 40% with the border's median as the background


def test_colour_arrays_are_turned_grey(digits):
    files, _, data = digits
    img = data.test_images[0]
    rgb = np.stack([img, img, img], -1)
    np.save(files["npy"].parent / "rgb.npy", rgb)
    np.testing.assert_array_equal(load_gray(files["npy"].parent / "rgb.npy"), img)
