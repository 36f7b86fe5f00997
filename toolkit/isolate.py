"""Work on untrusted models, bounded: a child process with a time limit and a memory limit.

A model from someone else's folder can make a runtime hang (an ONNX `Loop` of 10^12 iterations),
allocate without bound (a `.tflite` declaring one huge tensor) or abort the process (a native
assertion in a delegate). `call()` runs such work in a child: a hang becomes `Timeout`, a signal
`Crashed` (with the child's last line of stderr), an allocation over the limit `OutOfMemory` (or a
crash, where the runtime aborts instead of raising), and the caller (one row of verify, one predict
run) turns each into a FAIL row or one `Error:` line and carries on. Edge side: standard library only
(plus what the work itself imports)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from toolkit import errors
from toolkit.errors import ToolkitError, first_line

DEFAULT_TIMEOUT_S = 300.0  # one verify row: ~1-3 s on the full test set here; a hung runtime stops here
DEFAULT_MEMORY_MB = 4096  # above what the child holds after its imports; ours need ~300 MB at most


class Bounded(ToolkitError):
    """Work stopped by a bound (time, memory) or by the child's death."""


class Timeout(Bounded):
    pass


class Crashed(Bounded):
    pass


class OutOfMemory(Bounded):
    pass


_CONTEXT = None
# Tests that replace a runtime's internals (monkeypatch cannot reach a child) run the work here instead:
# same errors, no bounds.
IN_PROCESS = False


def _context(preload: tuple = ()):
    """A forkserver (children fork from a clean server that has only imported `preload`: no threads of
    a runtime in use are copied), or spawn where there is none."""
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            # torch, when this process already has it: a row that needs it would otherwise import it
            # again in every child (2-3 s each)
            import sys

            if "torch" in sys.modules:
                preload = ("torch", *preload)
            ctx.set_forkserver_preload(["toolkit.isolate", "numpy", "onnxruntime", *dict.fromkeys(preload)])
            _start_forkserver()
        _CONTEXT = ctx
    return _CONTEXT


def _start_forkserver() -> None:
    """Start the forkserver with the working directory kept off its sys.path. Python starts it as
    `python -c …`, which puts the working directory first on sys.path (3.11 ignores the parent's path
    there): a `toolkit/`, `numpy/` or `torch/` folder where the user runs mnisttk — a supplier's folder —
    would be imported, and run, by every row's child. PYTHONSAFEPATH keeps it off; the folder that
    holds this `toolkit` is put on PYTHONPATH when it is not an installed one (a source checkout)."""
    import site
    from multiprocessing import forkserver
    from pathlib import Path

    import toolkit
    from toolkit.scoped import environ

    root = str(Path(toolkit.__file__).resolve().parent.parent)
    installed = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in installed and root not in path:
        path.insert(0, root)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(path)  # for the server's start only: restored below
    try:
        with environ("PYTHONSAFEPATH", "1"):
            forkserver.ensure_running()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def prepare(preload: tuple = ()) -> None:
    """Choose the modules the children start with (e.g. torch, for rows that need it), before the
    first call; later calls keep the first choice."""
    _context(tuple(preload))


def warm_up() -> None:
    """Start the forkserver (and its preloaded imports) now, so that the first real call does not wait
    for it; errors are left to that call to report."""
    if IN_PROCESS:
        return
    with contextlib.suppress(ToolkitError):
        call(len, (), timeout_s=120, memory_mb=None, what="the children's start-up")


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_memory(extra_bytes: int) -> None:
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _serve(conn, memory_bytes, stderr_path):
    """The child: run each (fn, args, kwargs) the parent sends, in turn, and send back its value or its
    error, until the parent closes the pipe (or sends None)."""
    # The child's native stderr (a runtime's abort message) goes to a file the parent reads.
    fd = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_bytes:
        _limit_memory(memory_bytes)
    try:
        while True:
            try:
                work = conn.recv()
            except (EOFError, OSError):
                return
            if work is None:
                return
            fn, args, kwargs = work
            try:
                conn.send(("ok", fn(*args, **kwargs)))
            except ToolkitError as exc:
                conn.send(("error", type(exc).__name__, str(exc)))
            except MemoryError:
                conn.send(("error", "OutOfMemory", "ran out of its memory limit"))
            except BaseException as exc:  # noqa: BLE001 - a runtime's own exception types: one line, never a traceback
                conn.send(("error", "ToolkitError", f"{type(exc).__name__}: {first_line(exc, 200)}"))
    finally:
        conn.close()


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _error(name: str, message: str) -> ToolkitError:
    cls = {"Timeout": Timeout, "Crashed": Crashed, "OutOfMemory": OutOfMemory}.get(name) or getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ToolkitError)):
        cls = ToolkitError
    return cls(message)


def _in_process(fn: Callable, args, kwargs, what: str):
    try:
        return fn(*args, **kwargs)
    except ToolkitError:
        raise
    except MemoryError:
        raise OutOfMemory(f"{what} ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - whatever a runtime raised in the child: one line, never a traceback
        raise ToolkitError(f"{type(exc).__name__}: {first_line(exc, 200)}") from None


class Worker:
    """One bounded child that runs several calls in turn: a verify row's measurement, then its timing
    rounds, on the model it loaded once. The memory limit holds for the child's whole life; each call
    has its own time limit. A call that times out or crashes ends the child: that call and every later
    one raise Timeout or Crashed. Use as a context manager (or call close()): the child ends with it.
    Under IN_PROCESS the calls run in this process, with the same errors and no bounds."""

    def __init__(self, *, memory_mb: int | None = DEFAULT_MEMORY_MB, what: str = "the runtime"):
        self.what = what
        self._dead: Bounded | None = None
        self._proc: Any = None  # a multiprocessing Process of the forkserver's context
        if IN_PROCESS:
            return
        ctx = _context()
        fd, self._stderr_path = tempfile.mkstemp(prefix="mnisttk-child-", suffix=".log")
        os.close(fd)
        self._conn, child_conn = ctx.Pipe(duplex=True)
        memory = int(memory_mb) * 1024 * 1024 if memory_mb else None
        self._proc = ctx.Process(target=_serve, args=(child_conn, memory, self._stderr_path), daemon=True)
        try:
            self._proc.start()
        finally:
            child_conn.close()

    def call(self, fn: Callable, *args, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs):
        """`fn(*args, **kwargs)` in the child (`fn` module-level, its value picklable): its value, or the
        child's ToolkitError re-raised here, or Timeout / Crashed / OutOfMemory."""
        if self._proc is None:
            return _in_process(fn, args, kwargs, self.what)
        if self._dead is not None:
            raise self._dead
        try:
            try:
                self._conn.send((fn, args, kwargs))
            except (BrokenPipeError, OSError):
                raise self._crashed() from None
            if not self._conn.poll(timeout_s):
                self._kill()
                self._dead = Timeout(f"{self.what} did not finish within {timeout_s:g} s; stopped")
                raise self._dead
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                raise self._crashed() from None
        except KeyboardInterrupt:
            self._kill()
            raise
        if message[0] == "ok":
            return message[1]
        raise _error(message[1], message[2])

    def _crashed(self) -> Crashed:
        self._proc.join(10)
        code = self._proc.exitcode
        name = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
        tail = _last_line(self._stderr_path)
        self._dead = Crashed(f"{self.what} crashed ({name}{': ' + tail if tail else ''})")
        return self._dead

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(10)

    def close(self) -> None:
        """End the child (it is told to stop, then killed if it has not within a second)."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._dead = self._dead or Crashed(f"{self.what}: its child was closed")
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        proc.join(1)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        self._conn.close()
        with contextlib.suppress(OSError):
            os.unlink(self._stderr_path)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call(fn: Callable, *args, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int | None = DEFAULT_MEMORY_MB,
         what: str = "the runtime", **kwargs):
    """`fn(*args, **kwargs)` in a child process of its own; its value (which must pickle), or the child's
    ToolkitError re-raised here, or Timeout / Crashed / OutOfMemory. `fn` must be a module-level
    function. memory_mb None: no memory limit (a CUDA runtime maps far more address space than it uses)."""
    with Worker(memory_mb=memory_mb, what=what) as worker:
        return worker.call(fn, *args, timeout_s=timeout_s, **kwargs)
