"""Post-training static int8 quantization, calibrated on TRAINING images only.

Two back ends behind small functions:
  * ONNX: onnxruntime.quantization (pre-processing, then quantize_static) on the fp32 ONNX;
  * TorchScript: PyTorch's own FX static quantization (conv+ReLU fused, x86 back end).
    torch.ao.quantization is deprecated in torch 2.14 and PT2E models cannot be
    TorchScripted, so this is the one path that still works; it lives in
    `torch_static_int8` alone and its warnings are kept off the user's terminal.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.fsutil import sha256_bytes

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    calibration_size: int = 1000  # training images; accuracy is flat from ~500 up (see README)
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True  # per-output-channel weight scales: cheaper in accuracy, same speed
    quant_format: str = "qdq"  # qdq (portable, ORT fuses it to int8 kernels) | qoperator
    activation_type: str = "uint8"  # uint8 activations: U8S8 kernels, fastest on x86 (VNNI and AVX2)
    weight_type: str = "int8"  # int8 weights (symmetric)
    uint8_input: bool = True  # the ONNX int8 model takes raw uint8 pixels: /255 folded into its input scale
    seed: int = 0  # which training images calibrate

    def __post_init__(self):
        if self.calibration_size < 1:
            raise ExportError("--calibration-size must be at least 1")
        if self.method not in METHODS:
            raise ExportError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.quant_format not in ("qdq", "qoperator"):
            raise ExportError("quantization format must be qdq or qoperator")
        if self.activation_type not in ("uint8", "int8") or self.weight_type not in ("uint8", "int8"):
            raise ExportError("activation and weight types must be int8 or uint8")

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_indices(n_train: int, config: QuantConfig) -> np.ndarray:
    """Seeded, sorted indices into the TRAINING split (never the test set)."""
    if config.calibration_size > n_train:
        raise ExportError(f"--calibration-size {config.calibration_size} is larger than the training set ({n_train} images)")
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n_train, size=config.calibration_size, replace=False)).astype(np.int64)


def indices_sha256(indices: np.ndarray) -> str:
    return sha256_bytes(np.asarray(indices, dtype=np.int64).tobytes())


# ------------------------------------------------------------------ ONNX


def onnx_static_int8(fp32_path: Path, out_path: Path, calib_images: np.ndarray, config: QuantConfig) -> None:
    """fp32 ONNX -> int8 ONNX. calib_images: float32 N×1×28×28 in [0, 1]."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch: int = 100):
            self.batches = iter([{"image": images[i : i + batch]} for i in range(0, len(images), batch)])

        def get_next(self):
            return next(self.batches, None)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="mnisttk-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
            quantize_static(
                str(pre), str(out_path), Reader(calib_images),
                quant_format=QuantFormat.QDQ if config.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=config.per_channel,
                activation_type=types[config.activation_type],
                weight_type=types[config.weight_type],
                calibrate_method=methods[config.method],
                calibration_providers=["CPUExecutionProvider"],
                # Symmetric int8 weights; the histogram methods' own defaults otherwise.
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
    if config.uint8_input:
        model = onnx.load(str(out_path))
        fold_uint8_input(model)
        onnx.save(model, str(out_path))


def fold_uint8_input(model) -> None:
    """Make a quantized model take raw uint8 pixels: x/255 quantized with scale 1/255 and
    zero point 0 IS the pixel value, so the float input and its QuantizeLinear disappear.

    Works when the input feeds exactly one QuantizeLinear (QDQ) or QLinear op (QOperator)
    via a QuantizeLinear; that node's output is rewired to a DequantizeLinear (QDQ) or is
    the uint8 input itself (QOperator).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inp = graph.input[0]
    consumers = [n for n in graph.node if inp.name in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
        raise ExportError("cannot fold the /255 into the int8 input: the input does not feed one QuantizeLinear")
    q = consumers[0]
    scale_name, zp_name = q.input[1], q.input[2] if len(q.input) > 2 else None
    inits = {i.name: i for i in graph.initializer}
    zp = numpy_helper.to_array(inits[zp_name]) if zp_name else np.uint8(0)
    q_out = q.output[0]
    dq_after = [n for n in graph.node if q_out in n.input]
    new_scale = numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "image_u8_scale")
    new_zp = numpy_helper.from_array(np.array(0, dtype=np.uint8), "image_u8_zero_point")
    graph.initializer.extend([new_scale, new_zp])
    if zp.dtype != np.uint8 and not all(n.op_type == "DequantizeLinear" for n in dq_after):
        raise ExportError("cannot fold the /255 into an int8 (signed) QOperator input")
    # The uint8 pixel tensor replaces the quantized input everywhere it was used.
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == q_out:
                node.input[i] = inp.name
                if node.op_type == "DequantizeLinear":
                    node.input[1] = new_scale.name
                    if len(node.input) > 2:
                        node.input[2] = new_zp.name
                    else:
                        node.input.append(new_zp.name)
                elif node.op_type.startswith("QLinear"):
                    node.input[i + 1] = new_scale.name
                    node.input[i + 2] = new_zp.name
    graph.node.remove(q)
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    model.doc_string = "input: uint8 pixels N×1×28×28 (0-255), no /255 needed"
    onnx.checker.check_model(model)


def onnx_quant_params(path: Path) -> dict:
    """Scale and zero point of every quantized tensor in an int8 ONNX model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            tensor = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
            scale = inits.get(node.input[1])
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            if scale is not None:
                params[tensor] = {
                    "scale": np.atleast_1d(scale).astype(float).tolist(),
                    "zero_point": np.atleast_1d(zp).astype(int).tolist() if zp is not None else [0],
                    "dtype": str(zp.dtype) if zp is not None else "uint8",
                }
    return params


# ------------------------------------------------------------------ TorchScript


def torch_static_int8(model, calib_images: np.ndarray, config: QuantConfig):
    """PyTorch FX static int8 (x86 back end, conv+ReLU fused) -> a traced TorchScript module
    taking float32 N×1×28×28 in [0, 1]."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's DeprecationWarnings
        from torch.ao.quantization import QConfig, QConfigMapping
        from torch.ao.quantization.observer import (
            HistogramObserver,
            MinMaxObserver,
            PerChannelMinMaxObserver,
        )
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        if "x86" not in torch.backends.quantized.supported_engines:
            raise ExportError("this torch build has no x86 quantized engine")
        torch.backends.quantized.engine = "x86"
        act_observer = MinMaxObserver if config.method == "minmax" else HistogramObserver
        activation = act_observer.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
        if config.per_channel:
            weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        else:
            weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        qmap = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
        example = torch.from_numpy(calib_images[:1])
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), qmap, example_inputs=(example,))
        with torch.no_grad():
            x = torch.from_numpy(calib_images)
            for i in range(0, len(x), 100):
                prepared(x[i : i + 100])
        quantized = convert_fx(prepared)
        with torch.no_grad():
            traced = torch.jit.trace(quantized, example)
    return traced, quantized


def torch_quant_params(quantized) -> dict:
    """Scale and zero point of every quantized tensor in a converted FX model."""
    import torch

    params = {}
    for name, module in quantized.named_modules():
        if hasattr(module, "scale") and hasattr(module, "zero_point"):
            params[f"{name}.output"] = {"scale": [float(module.scale)], "zero_point": [int(module.zero_point)], "dtype": "quint8"}
        weight_fn = getattr(module, "weight", None)
        if callable(weight_fn):
            w = weight_fn()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                    scale, zp = w.q_per_channel_scales().tolist(), w.q_per_channel_zero_points().tolist()
                else:
                    scale, zp = [float(w.q_scale())], [int(w.q_zero_point())]
                params[f"{name}.weight"] = {"scale": scale, "zero_point": zp, "dtype": "qint8"}
    for name, buf in quantized.named_buffers():
        if "scale" in name and buf.numel() == 1:
            zp_name = name.replace("scale", "zero_point")
            zp = dict(quantized.named_buffers()).get(zp_name)
            params[name.replace("_scale", "")] = {"scale": [float(buf)], "zero_point": [int(zp) if zp is not None else 0], "dtype": "quint8"}
    return params
