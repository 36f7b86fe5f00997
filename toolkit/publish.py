"""All-or-nothing publishing of an export into its folder.

The new files are staged in a hidden `.export-*` folder inside the destination. Publishing
first hard-links every file it will replace into the stage (`old/`), writes a journal, then
renames the new files into place, the manifest last. A failure or Ctrl-C rolls every rename
back; a process killed outright leaves the journal, and the next mnisttk command that opens
the folder rolls it back (a stage is stale when no live process holds its lock). A reader
(verify) therefore sees the previous export or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable

STAGE_PREFIX = ".export-"
LOCK_NAME = ".lock"
JOURNAL_NAME = "JOURNAL.json"
_rename = os.replace  # publishing's own renames (tests fail or kill the Nth one)


def _try_lock(path: Path, block: bool = False):
    """An exclusive lock on `path` held by this process (released when it dies, even by SIGKILL),
    or None if another live process holds it. Without fcntl (not POSIX), the recorded pid decides."""
    try:
        import fcntl
    except ImportError:
        return _pid_lock(path)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        return None
    return f


class _PidLock:
    def close(self):
        pass


def _pid_lock(path: Path):
    pid_file = path.parent / "pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return _PidLock()  # being set up, or no owner recorded
    if pid == os.getpid():
        return _PidLock()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _PidLock()  # its writer is gone
    except OSError:
        pass
    return None


def _keep_copy(src: Path, dst: Path) -> None:
    """A hard link to the file about to be replaced (free), or a copy where links are unsupported."""
    import errno

    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # EPERM (an immutable file) and the like: stop before anything changes
        shutil.copy2(src, dst, follow_symlinks=False)


class Stage:
    """A locked staging folder inside `out`; `stage.new` receives the files to publish."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.out))
        self._lock = _try_lock(self.dir / LOCK_NAME)
        (self.dir / "pid").write_text(str(os.getpid()))
        self.new = self.dir / "new"
        self.new.mkdir()
        self.old = self.dir / "old"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock:
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT/SIGTERM wait until the block is done (the main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def publish(stage: Stage, order: list[str], remove: list[str] = ()) -> None:
    """Move `stage.new/<name>` for each name in `order` into `stage.out` (the last one, the manifest,
    is the switch), then delete `remove`. A name may be a folder (a model repository): the old one is
    moved aside into the stage, the new one moved in. Raises OSError after rolling back, leaving
    `out` as it was."""
    out = stage.out
    stage.old.mkdir(exist_ok=True)
    existed = []
    for name in order:  # keep a link to every file that will change: the rollback's copy
        if os.path.lexists(out / name):
            if not _is_dir(out / name):
                _keep_copy(out / name, stage.old / name)
            existed.append(name)
    journal = {"pid": os.getpid(), "replace": list(order), "existed": existed, "committed": False}
    (stage.dir / JOURNAL_NAME).write_text(json.dumps(journal))
    with _signals_deferred():
        done = []
        try:
            for name in order:
                done.append(name)
                if name in existed and _is_dir(out / name):
                    _rename(out / name, stage.old / name)  # a folder cannot be replaced in one rename
                _rename(stage.new / name, out / name)
        except BaseException:
            _rollback(out, stage.old, done, existed)
            raise
        journal["committed"] = True
        (stage.dir / JOURNAL_NAME).write_text(json.dumps(journal))
    for name in remove:  # not listed by the new manifest: garbage now, gone
        if name not in order and os.path.lexists(out / name):
            shutil.rmtree(out / name) if _is_dir(out / name) else os.unlink(out / name)


def _rollback(out: Path, old: Path, names, existed) -> None:
    for name in reversed(list(names)):
        if name in existed:
            if not os.path.lexists(old / name):
                continue  # a folder never moved aside: the original is still in place
            if _is_dir(old / name) and os.path.lexists(out / name):
                shutil.rmtree(out / name) if _is_dir(out / name) else os.unlink(out / name)
            _rename(old / name, out / name)
        elif os.path.lexists(out / name):
            shutil.rmtree(out / name) if _is_dir(out / name) else os.unlink(out / name)


def _age_s(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def recover(out: Path, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Roll back exports into `out` that died while publishing, and remove stale staging
    folders (ones no live process holds). Returns what was done, one line each (also logged)."""
    out = Path(out)
    done = []
    try:
        stages = [p for p in out.iterdir() if p.name.startswith(STAGE_PREFIX) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return done
    for stage in stages:
        if not (stage / "pid").exists() and _age_s(stage) < 3600:
            continue  # being set up by a live export this very moment
        try:
            lock = _try_lock(stage / LOCK_NAME)
        except OSError:
            continue
        if lock is None:
            continue  # a live export owns it
        try:
            what = f"removed stale staging folder {stage.name} (its export was interrupted)"
            journal_path = stage / JOURNAL_NAME
            if journal_path.is_file():
                journal = json.loads(journal_path.read_text())
                if not journal.get("committed"):
                    _rollback(out, stage / "old", journal["replace"], journal["existed"])
                    what = (f"an export into {out} was killed while publishing (pid {journal.get('pid')}): "
                            "previous artifacts restored")
            shutil.rmtree(stage, ignore_errors=True)
            done.append(what)
            log(what)
        except (OSError, ValueError, KeyError) as exc:
            log(f"cannot clean up {stage}: {exc}")
        finally:
            lock.close()
    return done
