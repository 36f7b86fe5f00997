"""Training with the whole dataset resident on the training device.

A per-sample DataLoader manages ~38 batches/s on this model; here each epoch is one
seeded permutation and index_select on tensors already on the device.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
from torch import nn

from toolkit import arch as arch_mod
from toolkit.config import TrainConfig  # noqa: F401  (part of this module's API)
from toolkit.contract import InputSpec, SpecError, to_float_input
from toolkit.data import MNIST
from toolkit.env import library_versions
from toolkit.errors import RuntimeUnavailable, ToolkitError, first_line
from toolkit.metrics import classification_metrics
from toolkit.model import count_parameters


def select_device(name: str = "auto") -> torch.device:
    """The one place the training device is chosen."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailable("--device cuda asked for, but torch sees no CUDA GPU (use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ToolkitError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def to_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(to_float_input(images)).to(device)  # N×C×H×W in [0, 1], as torchvision's ToTensor()
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return x, y


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    # batch 500 in channels_last: the fastest of 500/2000/10000 on this CPU (220 vs 318 ms per test pass)
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> dict:
    preds = predict_logits(model, x).argmax(1).cpu().numpy()
    return classification_metrics(y.cpu().numpy(), preds, num_classes)


class EagerStep:
    """One optimizer step on the batch order[i·B:(i+1)·B]; the running loss stays on the device."""

    set_grads_to_none = True  # cheapest between eager steps

    def __init__(self, model, optimizer, criterion, x, y, batch_size):
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.x, self.y, self.batch_size = x, y, batch_size
        self.loss_sum = torch.zeros((), device=x.device)

    def __call__(self, order: torch.Tensor, i: int) -> None:
        idx = order[i * self.batch_size : (i + 1) * self.batch_size]
        xb = self.x[idx].contiguous(memory_format=torch.channels_last)
        loss = self.criterion(self.model(xb), self.y[idx])
        self.optimizer.zero_grad(set_to_none=self.set_grads_to_none)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()


def restore_initial_state(params, saved, optimizer, loss_sum) -> None:
    with torch.no_grad():
        for p, s in zip(params, saved, strict=False):
            p.copy_(s)
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    v.zero_()  # exp_avg, exp_avg_sq and the step counter
        loss_sum.zero_()


class CudaGraphStep(EagerStep):
    """The whole training step captured once as a CUDA graph and replayed: one small index copy
    and one graph launch per step, no host sync. Warm-up steps needed before capture are undone,
    so the optimization is exactly the recipe's (same steps, same order)."""

    set_grads_to_none = False  # a short eager last batch zeroes the graph's grad tensors in place

    def __init__(self, model, optimizer, criterion, x, y, batch_size):
        super().__init__(model, optimizer, criterion, x, y, batch_size)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=x.device)
        params = [p for p in model.parameters()]
        saved = [p.detach().clone() for p in params]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # cuBLAS/cuDNN workspaces and optimizer state, before capture
                    optimizer.zero_grad(set_to_none=True)
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
            # No grads at capture: backward then allocates them in the graph's pool and every
            # replay overwrites them (with grads present it would accumulate across replays).
            optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
        finally:
            # Undo the warm-up whether or not capture worked: weights as initialised, Adam state
            # fresh — in place, so the graph (or the eager fallback) sees these very tensors.
            restore_initial_state(params, saved, optimizer, self.loss_sum)

    def _body(self):
        xb = self.x.index_select(0, self.idx).contiguous(memory_format=torch.channels_last)
        loss = self.criterion(self.model(xb), self.y.index_select(0, self.idx))
        loss.backward()  # captured: grads are overwritten on every replay
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def __call__(self, order: torch.Tensor, i: int) -> None:
        chunk = order[i * self.batch_size : (i + 1) * self.batch_size]
        if len(chunk) != self.batch_size:  # a short last batch runs eagerly
            return super().__call__(order, i)
        self.idx.copy_(chunk, non_blocking=True)
        self.graph.replay()


def make_step(model, optimizer, criterion, x, y, batch_size, cuda_graph: bool, log) -> EagerStep:
    if cuda_graph and x.device.type == "cuda":
        try:
            return CudaGraphStep(model, optimizer, criterion, x, y, batch_size)
        except RuntimeError as exc:  # capture unsupported here: same math, eagerly
            log(f"CUDA graph capture failed ({first_line(exc, 120)}); training eagerly")
    return EagerStep(model, optimizer, criterion, x, y, batch_size)


def choose_threads(threads: int | None, log: Callable[[str], None] = lambda s: None) -> tuple[int, str]:
    """torch's CPU threads for training and why: `threads` as asked (0: every core), or by default the
    cores other processes leave idle now (torch's default of every core ran 5-17× slower than one
    thread when another process kept one of two cores busy: its threads wait on each other)."""
    from toolkit.runtimes.candidate import resolve_threads
    from toolkit.timing import sample_idle_cores

    if threads is not None:
        n = resolve_threads(threads)
        return n, f"{n} (asked for{': every core' if threads == 0 else ''})"
    n, busy = sample_idle_cores()
    cores = os.cpu_count() or 1
    why = (f"{n} of {cores} cores: the ones idle at start ({busy:.1f} busy with other processes; --threads to choose)"
           if busy is not None else f"{n} (every core; this machine's load is unreadable)")
    return n, why


def train(
    config: TrainConfig,
    data: MNIST,
    device: torch.device,
    log: Callable[[str], None] = lambda s: None,
    progress: bool = True,
    cuda_graph: bool = True,
    threads: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train per `config`; returns the model (eval mode, on the CPU) and a result dict
    with per-epoch history and labelled train/test metrics. On a GPU, cuDNN's per-shape algorithm
    search is on while it trains, and as it was after (toolkit.scoped). `threads`: torch's CPU threads
    (0: every core; None: the cores idle at start, see choose_threads), set only while it trains."""
    from toolkit.scoped import cudnn_benchmark, torch_threads

    n, why = choose_threads(threads)
    log(f"CPU threads: {why}")
    with cudnn_benchmark(True) if device.type == "cuda" else contextlib.nullcontext(), torch_threads(n):
        try:
            model, result = _train(config, data, device, log, progress, cuda_graph)
        except SystemExit as exc:  # a model's forward() that calls sys.exit: an error, no checkpoint claimed
            raise ToolkitError(f"the model's code called sys.exit({str(exc.code)[:40]}) during training; "
                               "no checkpoint written") from None
    result["threads"], result["threads_chosen"] = n, why
    return model, result


def _train(config: TrainConfig, data: MNIST, device: torch.device, log, progress: bool,
           cuda_graph: bool) -> tuple[nn.Module, dict]:
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    # channels_last: oneDNN's NHWC conv and max-pool kernels are 2-4× faster than NCHW
    # for these 8/16-channel maps (same math); the fused Adam is one kernel for all params.
    ref = arch_mod.parse(config.arch, config.arch_args)
    spec = input_spec(config, data)
    model = arch_mod.build(ref, data.num_classes, spec)
    arch_mod.probe(model, data.num_classes, ref.spec, spec)
    ref = arch_mod.with_module_sha(ref)
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True, capturable=device.type == "cuda")
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)

    x_train, y_train = to_tensors(data.train_images, data.train_labels, device)
    x_test, y_test = to_tensors(data.test_images, data.test_labels, device)
    n = len(x_train)
    steps = (n + config.batch_size - 1) // config.batch_size
    model.train()
    step_fn = make_step(model, optimizer, criterion, x_train, y_train, config.batch_size, cuda_graph, log)
    if isinstance(step_fn, CudaGraphStep):
        log("training step captured as a CUDA graph")

    history = []
    t_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        step_fn.loss_sum.zero_()
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress,
                   unit="batch", mininterval=0.5)
        for step in bar:
            step_fn(order, step)
            if progress and step % 100 == 99:  # one host sync per 100 steps, for the bar only
                bar.set_postfix(loss=f"{step_fn.loss_sum.item() / (step + 1):.4f}")
        bar.close()
        train_loss = step_fn.loss_sum.item() / steps
        if not math.isfinite(train_loss):
            raise ToolkitError(f"training diverged: train loss {train_loss} at epoch {epoch} with lr {config.lr:g}; "
                               "no checkpoint written (try a smaller --lr)")
        test_acc = evaluate(model, x_test, y_test, data.num_classes)["accuracy"]
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": train_loss, "test_accuracy": test_acc, "seconds": seconds})
        log(f"epoch {epoch:>2}/{config.epochs}  train loss {train_loss:.4f}  test accuracy {test_acc:.2%}  ({seconds:.1f} s)")
    train_seconds = time.perf_counter() - t_start

    metrics = {"train": evaluate(model, x_train, y_train, data.num_classes),
               "test": evaluate(model, x_test, y_test, data.num_classes)}
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    result = {
        "arch": ref.stem,
        "arch_ref": ref.record(),
        "classes": list(data.classes),
        "input": spec.to_dict(),
        "recipe": asdict(config),
        "seed": config.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "parameters": count_parameters(model),
        "train_seconds": train_seconds,
        "history": history,
        "metrics": metrics,
        "data_sha256": dict(data.sha256),
        "data_source": data.source,
        "versions": library_versions(),
    }
    return model, result


def input_spec(config: TrainConfig, data: MNIST) -> InputSpec:
    """The data's input, with the normalisation `config` asks for (one value for every channel, or one per
    channel): SpecError in one line when it does not fit the data's channels."""
    spec = data.spec
    if config.mean is None and config.std is None:
        return spec

    def per_channel(values, name):
        values = tuple(values or ())
        if len(values) == 1:
            values = values * spec.channels
        if len(values) != spec.channels:
            raise SpecError(f"--{name} gives {len(values)} values; the data's images have {spec.channels} channel(s)")
        return values

    return replace(spec, mean=per_channel(config.mean, "mean"), std=per_channel(config.std, "std"))


def checkpoint_payload(model: nn.Module, result: dict) -> dict:
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **result}
