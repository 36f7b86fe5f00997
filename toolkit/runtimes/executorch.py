"""The ExecuTorch rows: `.pte` programs on ExecuTorch's runtime with the XNNPACK delegate.
ExecuTorch's Python runtime imports torch, so these rows need torch and `mnisttk[executorch]`;
without them verify skips the rows and says why. (`executorch-numpy-runtime`, a torch-free
runtime, needs Python >= 3.12 and ExecuTorch 1.3 programs: see the README.)

Arithmetic: the XNNPACK delegate runs an fp32 program in fp32 (an fp16 delegate is a choice made at
export, which mnisttk never makes): EXACT and DEFAULT are the same request here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from toolkit.contract import EVAL_BATCH, to_float_input
from toolkit.errors import RuntimeUnavailable, ToolkitError, first_line
from toolkit.manifest import confined_path
from toolkit.runtimes.candidate import (
    Arithmetic,
    Candidate,
    Placement,
    declared_spec,
    delegate_placement,
    read_model_bytes,
    resolve_threads,
)

INSTALL_HINT = "pip install 'mnisttk[executorch]'"
# Operators that only describe shapes or views: outside the delegate they cost nothing worth naming.
SHAPE_OPS = {"aten::sym_size", "executorch_prim::et_view", "aten::view_copy", "aten::_assert_async",
             "executorch_prim::add", "executorch_prim::mul", "executorch_prim::floordiv", "aten::sym_numel"}
MAX_BATCH = EVAL_BATCH  # the largest batch a program is memory-planned for (export's dynamic batch bound)
CONSISTENCY_BATCHES = (1, 2, 7, 64, EVAL_BATCH)
SCALAR_TYPES = {0: "uint8", 1: "int8", 6: "float32"}  # ExecuTorch's ScalarType codes (c10's numbering)


def quiet_torch_logs() -> None:
    """Importing ExecuTorch (torchao inside it) makes torch log a deprecation warning about its own
    internals ("KernelPreference is an Enum subclass…") on the user's terminal; keep it off."""
    import logging

    import torch  # noqa: F401  (torch sets its loggers' levels when imported: after it, not before)

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def import_runtime() -> None:
    """Import ExecuTorch's runtime and program reader without its compiler: `executorch.runtime` imports
    `executorch.exir._warnings`, and importing that runs `executorch/exir/__init__.py`, which loads the
    whole exporter (torch._dynamo, inductor): 9.8 s of a child's 10 s start here, against 2.5 s without
    it (torch itself). Where the exporter is not already loaded, the `executorch.exir` package is entered
    as a bare package (its submodules load from its folder; its `__init__` is not run) for these imports
    only, and taken out again, so that a later `import executorch.exir` (an export in this process) runs
    the real one. Raises ImportError where ExecuTorch is not installed."""
    import importlib.util
    import sys
    import types

    bare = None
    if "executorch.exir" not in sys.modules:
        spec = importlib.util.find_spec("executorch.exir")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("executorch.exir")
        bare = types.ModuleType("executorch.exir")
        bare.__path__, bare.__package__, bare.__spec__ = list(spec.submodule_search_locations), "executorch.exir", spec
        sys.modules["executorch.exir"] = bare
    try:
        import executorch.runtime  # noqa: F401
        from executorch.exir._serialize import _program  # noqa: F401
    finally:
        if bare is not None:
            if sys.modules.get("executorch.exir") is bare:
                del sys.modules["executorch.exir"]
            import executorch

            if getattr(executorch, "exir", None) is bare:
                del executorch.exir


def audit(data: bytes, name: str) -> dict:
    """What the program delegates (backend ids) and which operators run on portable kernels."""
    quiet_torch_logs()
    try:
        import_runtime()
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(data)
        program = getattr(program, "program", program)
        plan = program.execution_plan[0]
    except ImportError:
        raise RuntimeUnavailable(f"executorch is not installed ({INSTALL_HINT})") from None
    except Exception as exc:  # noqa: BLE001 - ExecuTorch's reader raises its own types on foreign bytes: one line
        raise ToolkitError(f"{name}: not a readable ExecuTorch program ({first_line(exc, 160)})") from None
    ops = [op.name for op in plan.operators]
    return {"backend": "XNNPACK", "delegates": [d.id for d in plan.delegates],
            "not_delegated": [op for op in ops if op not in SHAPE_OPS], "shape_ops": [op for op in ops if op in SHAPE_OPS]}


def load_method(data: bytes, name: str, threads: int):
    """The program's forward method, on ExecuTorch's shared thread pool sized to `threads` (> 0).

    The one process-wide change a runtime makes that it cannot undo: XNNPACK binds the pool when a
    program loads, and resizing it while the program lives crashes the process (SIGSEGV, measured with
    ExecuTorch 1.5.1), so the pool is sized before loading and left so. verify's rows each run in their
    own child process (toolkit.isolate), where it ends with the row; it is resized only when it differs."""
    try:
        import_runtime()
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except ImportError:
        raise RuntimeUnavailable(f"executorch is not installed ({INSTALL_HINT})") from None
    from toolkit.quietfd import native_output_captured

    try:
        with native_output_captured(), warnings.catch_warnings():  # cpuinfo's probe of /sys prints to stderr
            warnings.simplefilter("ignore")  # "experimental API"
            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
            program = Runtime.get().load_program(data)
            method = program.load_method("forward")
    except Exception as exc:  # noqa: BLE001 - ExecuTorch's loader raises its own types: one line
        raise ToolkitError(f"{name}: not a loadable ExecuTorch program ({first_line(exc, 160)})") from None
    return program, method


class ExecuTorchCandidate(Candidate):
    runtime = "ExecuTorch XNNPACK"

    def __init__(self, path: Path, precision: str, threads: int, sha256: str | None, name: str, file: str):
        import torch

        self.torch = torch
        self.name, self.precision, self.file = name, precision, file
        data, self.loaded_sha256 = read_model_bytes(path, sha256, "executorch")
        self._audit = audit(data, path.name)
        # the runtime reads the program from these bytes without copying them: keep them alive
        self._data = data
        self._program, self.method = load_method(data, path.name, resolve_threads(threads))
        meta = self.method.metadata
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ToolkitError(f"{path.name}: {meta.num_inputs()} inputs and {meta.num_outputs()} outputs; "
                               "an mnisttk model has 1 and 1")
        sizes = [int(d) for d in meta.input_tensor_meta(0).sizes()]
        self._declared_input = declared_spec(sizes, path.name)
        self.max_batch = int(sizes[0])  # memory-planned upper bound
        self.consistency_batches = tuple(b for b in CONSISTENCY_BATCHES if b <= self.max_batch)

    def _execute(self, x):
        try:
            (out,) = self.method.execute([x])
        except Exception as exc:  # noqa: BLE001 - ExecuTorch's runtime raises its own types: one line
            raise ToolkitError(f"{self.file}: ExecuTorch failed while running ({first_line(exc, 160)})") from None
        return out

    def declared_input(self) -> tuple[int, int, int] | None:
        return self._declared_input

    def prepare(self, images_u8):
        return to_float_input(images_u8)

    def input_dtype(self) -> str:
        """The program's declared input dtype (its memory-planned input tensor's ScalarType)."""
        code = self.method.metadata.input_tensor_meta(0).dtype()
        value = getattr(code, "value", code)
        return SCALAR_TYPES.get(value, str(code)) if isinstance(value, int) else str(code)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self._execute(self.torch.from_numpy(x)).numpy()

    def logits(self, images_u8, batch: int = EVAL_BATCH):
        return super().logits(images_u8, min(batch, self.max_batch))  # no more than it is memory-planned for

    def bench_input(self, images_u8):
        return self.torch.from_numpy(to_float_input(images_u8[: self.max_batch]))

    def run(self, x):
        return self._execute(x)

    def placement(self) -> Placement:
        found = self._audit
        return delegate_placement("XNNPACK", f"{len(found['delegates'])} XNNPACK delegate(s)", found,
                                  ("delegates", "shape_ops"))

    def consistency(self, images_u8, preds):
        return all(np.array_equal(self.logits(images_u8, b).argmax(1), preds) for b in self.consistency_batches)


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str, *,
              arithmetic: Arithmetic = Arithmetic.EXACT) -> ExecuTorchCandidate:
    return ExecuTorchCandidate(confined_path(folder, artifact["file"]), artifact["precision"], threads,
                               artifact["sha256"], name, artifact["file"])
