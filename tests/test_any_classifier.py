"""Any classifier a user ships (issue 46): the input is the data's, not MNIST's constant. An RGB residual
network on an image folder and a 100-class model through every target, a non-square grey input on NumPy
data through ONNX and LiteRT, each layout's bounds, and MNIST's default left as it was."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_arrays, write_idx
from helpers import LOOSE_ALL, run

from toolkit.contract import MAX_CHANNELS, MAX_SIDE, MNIST_INPUT, InputSpec, SpecError, to_float_input
from toolkit.data import load_mnist
from toolkit.errors import DataError

MODELS = Path(__file__).parent / "models"
# these data sets are a few dozen test images: one image is 1-2% of them, so the int8 gates (sized for
# 10,000 MNIST images) are opened and every other check (fp32 parity, batch consistency, delegation,
# every target checked) is kept
LOOSE_INT8 = [a for a in LOOSE_ALL if a != "--rounds" and a != "1"]


def _image_folder(root: Path, classes: int = 3, n_train: int = 40, n_test: int = 12, size=(32, 32)) -> Path:
    """train/<class>/*.png and test/<class>/*.png, RGB: each class a coloured square (its own colour) on
    dark noise, at a random place."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(230, 60, 40), (40, 200, 60), (60, 80, 230), (220, 220, 40)][:classes]
    h, w = size
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 50, (h, w, 3)).astype(np.float64)
                y, x = rng.integers(2, h - 12), rng.integers(2, w - 12)
                img[y:y + 10, x:x + 10] = colours[c]
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def _chain(tmp: Path, data: Path, arch: str, targets: str, *, epochs: int = 8, extra_train=()) -> tuple[dict, Path]:
    out = tmp / "exported"
    r = run("train", "--arch", arch, "--data-dir", data, "--epochs", epochs, "--batch-size", "16", "--lr", "0.01",
            "--device", "cpu", "--checkpoint", out / "model.pt", "--quiet", "--threads", "1", *extra_train)
    assert r.exit_code == 0, r.output
    r = run("export", "--checkpoint", out / "model.pt", "--dir", out, "--quantize", "--targets", targets,
            "--data-dir", data, "--quiet", "--no-int8-fallback")
    assert r.exit_code == 0, r.output
    r = run("verify", "--dir", out, "--data-dir", data, "--rounds", "1", "--json", tmp / "verify.json", "--quiet",
            *LOOSE_INT8)
    result = json.loads((tmp / "verify.json").read_text())
    assert r.exit_code == 0 and result["passed"], (r.output, result["failed_rows"])
    return result, out


def _every_target_checked(result: dict, out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(result["targets_checked"]) == sorted(manifest["targets"])
    assert not [r["id"] for r in result["rows"] if r["status"] == "FAIL"]
    return manifest


@pytest.mark.e2e
def test_an_rgb_residual_network_on_an_image_folder_through_every_target(tmp_path, openvino_rows):
    data = _image_folder(tmp_path / "shapes")
    result, out = _chain(tmp_path, data, f"{MODELS / 'resnet8_rgb.py'}:ResNet8", "all")
    manifest = _every_target_checked(result, out)
    assert len(manifest["targets"]) == 14, manifest["not_exported"]
    assert manifest["input"]["channels"] == 3 and (manifest["input"]["height"], manifest["input"]["width"]) == (32, 32)
    for a in manifest["artifacts"]:  # every artifact's own input entry says 3×32×32, and its output 3 wide
        assert a["inputs"][0]["shape"][1:] == [3, 32, 32], a
        assert a["outputs"][0]["shape"][-1] == 3, a
    assert manifest["classes"] == ["class_0", "class_1", "class_2"] and manifest["preprocessing"] == "resize"
    assert manifest["ood"]["image_checks"] is False  # ink and strokes mean nothing on a photo: logits alone
    # inspect builds every model as verify does: the ExecuTorch pair gave 3 logits where 10 were expected
    r = run("inspect", "--dir", out, "--data-dir", data, "--json", tmp_path / "inspect.json", "--repeats", "1",
            "--images", "20")
    assert r.exit_code == 0 and "not-one-of-the-3-classes decisions" in r.output, r.output
    assert json.loads((tmp_path / "inspect.json").read_text())["executorch"]["agreement"] > 0.9
    # predict answers in the data set's language, on a picture of another size (resized to 32×32)
    from PIL import Image

    picture = tmp_path / "big.png"
    Image.open(data / "test" / "class_2" / "000.png").resize((64, 64)).save(picture)
    files = {(a["format"], a["precision"]): a["file"] for a in manifest["artifacts"]}
    for model in (files["onnx", "fp32"], files["tflite", "fp32"]):
        r = run("predict", picture, "--model", out / model, "--json", "-", "--save-preprocessed", tmp_path / model)
        doc = json.loads(r.stdout)
        assert doc["preprocessing"] == "resize" and doc["results"][0]["label"] == "class_2", r.output
        fed = np.asarray(Image.open(doc["results"][0]["preprocessed"]))
        assert fed.shape == (32, 32, 3)


@pytest.mark.e2e
def test_a_non_square_grey_input_on_numpy_data_through_onnx_and_litert(tmp_path):
    """A keyword-spotting-shaped input (49×10 features, grey) in the NumPy layout, 5 named classes, the
    built-in CNN (its linear layer follows the input: 16×12×2)."""
    rng = np.random.default_rng(1)

    def make(n):
        y = np.arange(n) % 5
        x = rng.integers(0, 60, (n, 49, 10)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 8 * c:8 * c + 8, :] = 240  # each class a band of rows
        return x, y.astype(np.int64)

    data = tmp_path / "kws"
    data.mkdir()
    names = np.array(["yes", "no", "up", "down", "left"])
    x, y = make(200)
    np.savez(data / "train.npz", x=x, y=y, classes=names)
    x, y = make(50)
    np.savez(data / "test.npz", x=x, y=y)
    result, out = _chain(tmp_path, data, "cnn", "onnx,tflite", epochs=6)
    manifest = _every_target_checked(result, out)
    assert set(manifest["targets"]) == {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"}
    assert {tuple(a["inputs"][0]["shape"][1:]) for a in manifest["artifacts"]} == {(1, 49, 10)}
    assert manifest["classes"] == list(names)
    assert sorted(p.name for p in data.iterdir()) == ["test.npz", "train.npz"]  # nothing written into it


@pytest.mark.e2e
def test_a_hundred_classes_through_every_target(tmp_path, openvino_rows):
    """C = 100: every converter's program reports 100 outputs; the not-a-class rule of a model this wide
    judges by the energy alone (a 100×100 logit model would be 20,000 numbers in every file's metadata)."""
    rng = np.random.default_rng(2)
    protos = rng.integers(0, 256, (100, 8, 8))

    def make(per_class):
        y = np.repeat(np.arange(100), per_class)
        x = np.clip(protos[y] + rng.normal(0, 12, (len(y), 8, 8)), 0, 255).astype(np.uint8)
        return x, y

    data = tmp_path / "hundred"
    data.mkdir()
    x, y = make(6)
    np.savez(data / "train.npz", x=x, y=y)
    x, y = make(1)
    np.savez(data / "test.npz", x=x, y=y)
    result, out = _chain(tmp_path, data, "mlp", "all", epochs=25)
    manifest = _every_target_checked(result, out)
    assert len(manifest["targets"]) == 14, manifest["not_exported"]
    assert {a["outputs"][0]["shape"][-1] for a in manifest["artifacts"]} == {100}
    assert manifest["ood"]["logit_model"] == {"classes": 100} and set(manifest["ood"]["limits"]) == {"energy_min"}


def test_a_gate_speaks_of_the_data_sets_classes():
    from toolkit.gates import Gate, Reason
    from toolkit.ood import rule_words

    reason = Reason(Gate.OOD_AGREEMENT, 98.0, 99.0)
    assert reason.text().startswith("not-a-digit decisions")
    assert reason.text(rule_words(["cat", "dog", "bird"])[0]).startswith("not-one-of-the-3-classes decisions")
    assert rule_words(None)[0] == rule_words([str(d) for d in range(10)])[0] == "not-a-digit"


def test_the_input_spec_holds_at_its_bounds_and_refuses_one_past():
    assert InputSpec(MAX_CHANNELS, 4, 4).channels == MAX_CHANNELS
    assert InputSpec(1, MAX_SIDE, MAX_SIDE).height == MAX_SIDE
    for bad in ((MAX_CHANNELS + 1, 4, 4), (1, MAX_SIDE + 1, 4), (1, 4, 0), (True, 4, 4), (4, MAX_SIDE, MAX_SIDE + 1)):
        with pytest.raises(SpecError):
            InputSpec(*bad)
    with pytest.raises(SpecError):  # the pixel budget: 4 channels of 1024×1024 fit, 5 do not
        InputSpec(5, MAX_SIDE, MAX_SIDE)
    with pytest.raises(SpecError, match="pixel/255 only"):
        InputSpec.from_dict({"channels": 3, "height": 8, "width": 8, "scaling": "imagenet"})
    assert InputSpec.from_dict(InputSpec(3, 8, 9).to_dict()) == InputSpec(3, 8, 9)


def test_channels_last_images_become_channels_first_floats():
    x = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    f = to_float_input(x)
    assert f.shape == (2, 3, 4, 5) and f.flags["C_CONTIGUOUS"]
    assert f[1, 2, 3, 4] == np.float32(x[1, 3, 4, 2]) / np.float32(255)


def _npz(folder: Path, x_train, x_test, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x_train, y=np.arange(len(x_train)) % 2, **extra)
    np.savez(folder / "test.npz", x=x_test, y=np.arange(len(x_test)) % 2, **extra)
    return folder


@pytest.mark.parametrize("shape,extra,expect", [
    ((6, 3, 16, 12), {}, (16, 12, 3)),  # N×C×H×W
    ((6, 16, 12, 3), {}, (16, 12, 3)),  # N×H×W×C
    ((6, 16, 12, 1), {}, (16, 12)),  # N×H×W×1: grey
    ((6, 3, 8, 3), {"layout": np.array("NHWC")}, (3, 8, 3)),  # ambiguous: the archive's layout decides
    ((6, 3, 8, 3), {"layout": np.array("NCHW")}, (8, 3, 3)),
])
def test_numpy_images_in_either_channel_order(tmp_path, shape, extra, expect):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = load_mnist(_npz(tmp_path / "d", x, x[:2], **extra))
    assert data.train_images.shape[1:] == expect
    if extra.get("layout") == np.array("NCHW") or shape[1] == 3 and not extra:  # the same pixels, moved
        assert data.train_images[1, 2, 1, 0] == x[1, 0, 2, 1]


def test_an_ambiguous_numpy_layout_is_refused_in_one_line(tmp_path):
    x = np.zeros((6, 3, 8, 3), np.uint8)
    with pytest.raises(DataError, match="add a 'layout' array"):
        load_mnist(_npz(tmp_path / "d", x, x))


def test_idx_files_of_rgb_images_are_read(tmp_path):
    arrays = synthetic_arrays(n_train=20, n_test=10)
    for k in ("train", "test"):
        arrays[f"{k}_images"] = np.repeat(arrays[f"{k}_images"][..., None], 3, axis=3)[:, :20, :24]
    data = load_mnist(write_idx(tmp_path / "rgb", arrays))
    assert data.spec == InputSpec(3, 20, 24) and data.test_images.shape == (10, 20, 24, 3)


def test_image_folders_of_mixed_sizes_need_the_resize_option(tmp_path):
    from PIL import Image

    root = _image_folder(tmp_path / "d", classes=2, n_train=3, n_test=2)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(root / "train" / "class_1" / "odd.png")
    r = run("data", "--data-dir", root)
    assert r.exit_code == 1 and "odd.png: 40×30 pixels" in r.output and "--image-size" in r.output
    r = run("data", "--data-dir", root, "--image-size", "24x20", "--json", "-")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["input"]["width"], doc["input"]["height"], doc["input"]["channels"]) == (24, 20, 3)
    assert sorted(p.name for p in (root / "train" / "class_1").iterdir())[-1] == "odd.png"  # untouched
    for bad in ("0x4", "1025x2", "ax3", "3x3x3"):
        r = run("data", "--data-dir", root, "--image-size", bad)
        assert r.exit_code == 1 and "--image-size" in r.output.strip().splitlines()[-1], (bad, r.output)


def test_an_image_folder_of_grey_pictures_saved_as_rgb_is_grey(tmp_path):
    from PIL import Image

    root = tmp_path / "d"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((10, 12, 3), 40 * i + (c == "b") * 100, np.uint8)).save(root / split / c / f"{i}.png")
    data = load_mnist(root)
    assert data.spec == InputSpec(1, 10, 12)
    # one coloured picture makes the set RGB (the grey ones copied to each channel)
    Image.fromarray(np.dstack([np.full((10, 12), v, np.uint8) for v in (200, 10, 10)])).save(root / "test" / "a" / "red.png")
    data = load_mnist(root)
    assert data.spec == InputSpec(3, 10, 12) and data.train_images.shape == (4, 10, 12, 3)


def test_a_thousand_classes_are_read_and_one_more_name_is_refused(tmp_path):
    y = np.arange(1000)
    x = np.zeros((1000, 4, 4), np.uint8)
    folder = tmp_path / "wide"
    folder.mkdir()
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x[:5], y=y[:5])
    data = load_mnist(folder)
    assert data.num_classes == 1000 and data.train_labels.dtype == np.uint16
    np.savez(folder / "train.npz", x=x, y=y, classes=np.array([f"c{k}" for k in range(1001)]))
    with pytest.raises(DataError, match="expected 2 to 1000 names"):
        load_mnist(folder)


def test_export_and_verify_refuse_data_of_another_shape_than_the_model(tmp_path, exported):
    """A 3×32×32 data set against MNIST's 1×28×28 export and checkpoint: one line each, nothing written.
    An image folder is resized to the model's recorded size (its colour still differs)."""
    x = np.zeros((4, 32, 32, 3), np.uint8)
    data = _npz(tmp_path / "rgb", x, x)
    r = run("verify", "--dir", exported, "--data-dir", data)
    assert r.exit_code != 0 and "images are 3×32×32 (RGB), the model takes 1×28×28 (grey)" in r.output, r.output
    before = sorted(p.name for p in exported.iterdir())
    r = run("export", "--checkpoint", exported / "cnn.pt", "--dir", exported, "--data-dir", data)
    assert r.exit_code == 1 and "the data's images are 3×32×32 (RGB), the checkpoint's model takes 1×28×28" in r.output
    folder = _image_folder(tmp_path / "shapes", classes=2, n_train=3, n_test=2)
    r = run("verify", "--dir", exported, "--data-dir", folder)
    assert r.exit_code != 0 and "images are 3×28×28 (RGB), the model takes 1×28×28 (grey)" in r.output, r.output
    assert sorted(p.name for p in exported.iterdir()) == before


def test_mnist_is_read_and_stamped_exactly_as_before():
    """The default stays byte for byte: MNIST-shaped data is 1×28×28 grey, the built-in CNN's layers are
    the seed's, the synthetic non-digits the reference is made on are the same images, and the ONNX
    files' input description is the same words."""
    import torch

    from toolkit.exporters.artifact_meta import PREPROCESSING, describe_io, preprocessing_text
    from toolkit.model import CNN
    from toolkit.ood import non_digit_images

    assert InputSpec.of_images(np.zeros((3, 28, 28), np.uint8)) is not MNIST_INPUT
    assert InputSpec.of_images(np.zeros((3, 28, 28), np.uint8)) == MNIST_INPUT
    assert {k: tuple(v.shape) for k, v in CNN().state_dict().items()}["fc1.weight"] == (10, 784)
    assert hashlib.sha256(non_digit_images().tobytes()).hexdigest() == \
        "e4a0656a568a5237f3f373af4b9894d4454eece81026539c418ec03e44fb6c9c"
    assert describe_io(True)[0] == "uint8 N×1×28×28, raw pixels 0-255"
    assert describe_io(False)[0] == "float32 N×1×28×28, pixel/255 in [0, 1]"
    assert preprocessing_text(MNIST_INPUT) == PREPROCESSING
    assert torch.equal(torch.zeros(2, *MNIST_INPUT.chw), torch.zeros(2, 1, 28, 28))


def test_a_file_that_takes_another_input_than_its_manifest_says_fails_its_row(exported, tiny_export, tmp_path):
    """A classifier of 3×32×32 images swapped in for MNIST's int8 ONNX file (hash updated): its row says
    what it takes and what the manifest says; predict on it alone converts pictures to its own input."""
    import onnx
    from helpers import rehash
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((3 * 32 * 32, 10), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["image"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(exported / "cnn_int8.onnx"))
    rehash(exported, "cnn_int8.onnx")
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE_ALL)
    assert r.exit_code == 1 and "cnn_int8.onnx: takes 3×32×32 images, its manifest says 1×28×28" in r.stdout, r.output
    from PIL import Image

    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "red.png")
    import shutil

    alone = tmp_path / "alone.onnx"  # away from the manifest that records MNIST's digit preprocessing
    shutil.copy(exported / "cnn_int8.onnx", alone)
    r = run("predict", tmp_path / "red.png", "--model", alone, "--json", "-",
            "--save-preprocessed", tmp_path / "fed")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["preprocessing"] == "resize", r.output
    assert np.asarray(Image.open(doc["results"][0]["preprocessed"])).shape == (32, 32, 3)


def test_a_normalisation_travels_inside_the_model(tmp_path):
    """train --mean/--std: the normalisation is a part of the model (every artifact takes pixel/255 and
    carries it), recorded in the checkpoint and the manifest; a count that fits no channel is one line."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    x[::2, :6] = 255  # class 0: a bright top half
    data = _npz(tmp_path / "d", x, x[:10])
    out = tmp_path / "exported"
    r = run("train", "--arch", "cnn", "--data-dir", data, "--epochs", "3", "--device", "cpu", "--checkpoint",
            out / "cnn.pt", "--quiet", "--mean", "0.5,0.4,0.3", "--std", "0.25")
    assert r.exit_code == 0, r.output
    r = run("export", "--checkpoint", out / "cnn.pt", "--dir", out, "--data-dir", data, "--quiet")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["normalize"]["mean"] == [0.5, 0.4, 0.3]
    assert manifest["input"]["normalize"]["std"] == [0.25, 0.25, 0.25]
    assert manifest["artifacts"][0]["inputs"][0]["values"] == "pixel/255 in [0, 1]"
    import onnx

    graph = onnx.load(str(out / "cnn_fp32.onnx")).graph
    assert {"Sub", "Div"} <= {n.op_type for n in graph.node}  # the normalisation is in the file
    r = run("verify", "--dir", out, "--data-dir", data, "--rounds", "1", *LOOSE_INT8)
    assert r.exit_code == 0, r.output
    for args, needle in ((("--mean", "0.5,0.4", "--std", "1"), "--mean gives 2 values; the data's images have 3 channel(s)"),
                         (("--mean", "0.5"), "--mean and --std go together"),
                         (("--mean", "0.5", "--std", "0"), "input std (0.0, 0.0, 0.0) is not 3 finite number(s)"),
                         (("--mean", "x", "--std", "1"), "is not comma-separated numbers")):
        r = run("train", "--data-dir", data, "--epochs", "1", "--checkpoint", tmp_path / "no.pt", *args)
        assert r.exit_code != 0 and needle in r.output, (args, r.output)
        assert not (tmp_path / "no.pt").exists()
