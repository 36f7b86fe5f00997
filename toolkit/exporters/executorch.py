"""ExecuTorch programs (`.pte`): the PyTorch model through `torch.export` with a dynamic batch
(1 to 1,000), lowered to the XNNPACK delegate; with --quantize, static int8 by PT2E (torchao's
prepare/convert with ExecuTorch's XNNPACKQuantizer: per-channel symmetric int8 weights, int8
activations), calibrated on the same training images as every other int8 artifact.

An int8 program whose convolutions or linear layer are left on ExecuTorch's portable kernels is a
failed export: XNNPACK is why one ships int8 to ExecuTorch at all."""

from __future__ import annotations

from toolkit.contract import EVAL_BATCH
from toolkit.errors import PrecisionNotExportable
from toolkit.exporters import Artifact, Sources, Written
from toolkit.quietfd import native_output_captured

CALIB_BATCH = 100


def _restore_batch_range(edge_program) -> None:
    """torch 2.14's fake convolution picks a backend with a guard that narrows the batch symbol to
    at most 15 while the XNNPACK partitioner re-traces the graph; memory planning would then bound
    the input at 15 images although export declared 1,000 (and the delegate runs any size). Put the
    declared range back before planning."""
    for node in edge_program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and hasattr(val, "shape") and len(val.shape) and hasattr(val.shape[0], "node"):
            env = val.shape[0].node.shape_env
            for symbol, value_range in edge_program.range_constraints.items():
                env.var_to_range[symbol] = value_range
            return


def lower(module, example) -> bytes:
    """A dynamic-batch XNNPACK-delegated ExecuTorch program for `module` (example: a float batch)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim, export

    dynamic = ({0: Dim("batch", min=1, max=EVAL_BATCH)},)
    edge = to_edge_transform_and_lower(export(module, (example,), dynamic_shapes=dynamic),
                                       partitioner=[XnnpackPartitioner()])
    _restore_batch_range(edge.exported_program())
    return edge.to_executorch().buffer


CALIBRATION = ("minmax: MinMaxObserver on every activation over all the calibration images (PT2E, "
               "XNNPACKQuantizer's symmetric per-channel config with its HistogramObserver replaced)")


def minmax_config(config):
    """XNNPACKQuantizer's static config observes activations with a HistogramObserver, which minimizes
    the rounding error and may clip the extremes; mnisttk's calibration covers the calibration set's
    whole range on every target, so activations get a MinMaxObserver (same eps, same int8 range)."""
    from dataclasses import replace

    from torchao.quantization.pt2e import MinMaxObserver

    act = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return replace(config, input_activation=act, output_activation=act)


def quantize_pt2e(model, example, calib):
    """PT2E static int8 for XNNPACK, calibrated on `calib` (float N×C×H×W)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torch.export import Dim, export
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = ({0: Dim("batch", min=1, max=EVAL_BATCH)},)
    graph = export(model, (example,), dynamic_shapes=dynamic).module()
    quantizer = XNNPACKQuantizer().set_global(minmax_config(get_symmetric_quantization_config(is_per_channel=True)))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), CALIB_BATCH):
            prepared(torch.from_numpy(calib[i:i + CALIB_BATCH]))
    return convert_pt2e(prepared)


def export_executorch(src: Sources) -> Written:

    from toolkit.runtimes.executorch import audit, quiet_torch_logs

    quiet_torch_logs()
    example = src.example()
    written = Written()
    modules = {}
    with native_output_captured():
        for precision in src.precisions:
            modules[precision] = src.model if precision == "fp32" else quantize_pt2e(src.model, example, src.calib)
        programs = {precision: lower(module, example) for precision, module in modules.items()}
    for precision, data in programs.items():
        rel = f"{src.arch}_{precision}.pte"
        (src.stage / rel).write_bytes(data)
        placement = audit(data, rel)
        if precision == "int8" and (placement["not_delegated"] or not placement["delegates"]):
            raise PrecisionNotExportable("int8", f"{rel}: not delegated to XNNPACK: "
                                         f"{', '.join(placement['not_delegated']) or 'no delegate'} would run on "
                                         "ExecuTorch's portable kernels; export failed")
        written.top_level.append(rel)
        written.artifacts.append(Artifact("executorch", precision, rel, fields={
            "delegation": placement, "max_batch": EVAL_BATCH,
            **({"calibration_method": CALIBRATION} if precision == "int8" else {})}))
    return written
