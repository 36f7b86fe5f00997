"""All-or-nothing publishing of an export into its folder.

The new files are staged in a hidden `.export-*` folder inside the destination. Publishing
first hard-links every file it will replace into the stage (`old/`), writes a journal, then
renames the new files into place, the manifest last. A failure or Ctrl-C rolls every rename
back; a process killed outright leaves the journal, and the next `mnisttk export` into the same
folder rolls it back (a stage is stale when no live process holds its lock). A reader (verify)
therefore sees the previous export or the new one, never a mixture.

A folder is untrusted input: only `export` recovers, and only from a journal that this user's
mnisttk wrote itself (an HMAC under a key kept outside the folder, bound to the stage's path),
naming plain entries of the folder; a staging folder is removed only when it carries this user's
signed stage mark (`STAGE.json`, written when the stage was made), never by its name or a `pid` file;
anything else is left alone and reported. Read-only verbs (verify, inspect, predict) never recover,
lock or clean up.

The key (`$XDG_STATE_HOME/mnisttk/journal.key`, else `~/.local/state/…`) is 32 random bytes created
0600 in a 0700 folder and read with O_NOFOLLOW and O_NONBLOCK: a link, a FIFO, a file of another size
or one that others can read is refused in one line (JournalKeyError), never followed or used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from toolkit.userkey import JournalKeyError
from toolkit.userkey import key_path as _key_path
from toolkit.userkey import user_key as _journal_key

STAGE_PREFIX = ".export-"
LOCK_NAME = ".lock"
JOURNAL_NAME = "JOURNAL.json"
MARK_NAME = "STAGE.json"
_rename = os.replace  # publishing's own renames (tests fail or kill the Nth one)


def _try_lock(path: Path, block: bool = False):
    """An exclusive lock on `path` held by this process (released when it dies, even by SIGKILL),
    or None if another live process holds it. Without fcntl (not POSIX), the recorded pid decides.
    A link at `path` is never followed (OSError): a lock must not create a file elsewhere."""
    try:
        import fcntl
    except ImportError:
        return _pid_lock(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
    f = os.fdopen(fd, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        return None
    return f


class FolderBusy(OSError):
    """Another export holds the destination folder's lock."""


def lock_folder(out: Path):
    """An exclusive lock on the destination folder itself (no file is created), held by this process
    until `.close()` or its death: two exports into one folder never interleave. FolderBusy if held."""
    try:
        import fcntl
    except ImportError:
        return _PidLock()
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(errno.EWOULDBLOCK, f"another mnisttk export is writing into {out}") from None
    return _FdLock(fd)


class _FdLock:
    def __init__(self, fd: int):
        self.fd: int | None = fd

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _mark_mac(key: bytes, stage_dir: Path, pid) -> str:
    message = json.dumps(["mnisttk-stage", str(Path(stage_dir).resolve()), pid]).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _signed_stage(stage_dir: Path) -> tuple[bool, str]:
    """Whether this user's mnisttk made this staging folder (its signed mark), and why not."""
    mark = stage_dir / MARK_NAME
    if not mark.is_file() or mark.is_symlink():
        return False, "it has no stage mark of mnisttk's"
    try:
        doc = json.loads(mark.read_bytes()[:4096])
        key = _journal_key(create=False)
    except (OSError, ValueError, RecursionError) as exc:
        return False, str(exc) if isinstance(exc, JournalKeyError) else "its stage mark is unreadable"
    if key is None:
        return False, f"the journal key ({_key_path()}) is missing, so its mark cannot be checked"
    if not (isinstance(doc, dict) and isinstance(doc.get("mac"), str)
            and hmac.compare_digest(doc["mac"], _mark_mac(key, stage_dir, doc.get("pid")))):
        return False, "its stage mark was not written by this user's mnisttk for this folder"
    return True, ""


def _journal_mac(key: bytes, stage_dir: Path, journal: dict) -> str:
    body = {k: journal[k] for k in ("pid", "replace", "existed", "committed")}
    message = json.dumps([str(Path(stage_dir).resolve()), body], sort_keys=True).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _write_journal(stage_dir: Path, journal: dict, key: bytes | None) -> None:
    signed = dict(journal, mac=_journal_mac(key, stage_dir, journal) if key else None)
    (stage_dir / JOURNAL_NAME).write_text(json.dumps(signed))


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and len(name) <= 255)


def _trusted_journal(stage_dir: Path, raw: bytes) -> tuple[dict | None, str]:
    """The journal if this user's mnisttk wrote it for this very stage, else (None, why not)."""
    try:
        journal = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "its journal is not JSON"
    if not isinstance(journal, dict):
        return None, "its journal is not an object"
    replace, existed = journal.get("replace"), journal.get("existed")
    if not (isinstance(replace, list) and isinstance(existed, list) and isinstance(journal.get("committed"), bool)
            and all(_plain_name(n) for n in replace) and all(n in replace for n in existed)):
        return None, "its journal is malformed or names paths outside the folder"
    try:
        key = _journal_key(create=False)
    except JournalKeyError as exc:
        return None, str(exc)
    if key is None:
        return None, f"the journal key ({_key_path()}) is missing, so its journal cannot be checked"
    mac = journal.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _journal_mac(key, stage_dir, journal)):
        return None, "its journal was not written by this user's mnisttk for this folder"
    return journal, ""


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
    """A locked staging folder inside `out`; `stage.new` receives the files to publish.
    `published` turns True once the new files are all in place (the switch has happened)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.published = False
        self.dir = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.out))
        self._lock = _try_lock(self.dir / LOCK_NAME)
        (self.dir / "pid").write_text(str(os.getpid()))
        try:  # the mark that lets a later export remove this folder if this one dies (see recover)
            key = _journal_key(create=True)
        except JournalKeyError:
            self.close()
            raise
        if key is not None:
            pid = os.getpid()
            (self.dir / MARK_NAME).write_text(json.dumps({"pid": pid, "mac": _mark_mac(key, self.dir, pid)}))
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


def publish(stage: Stage, order: list[str], remove: tuple | list = ()) -> list[str]:
    """Move `stage.new/<name>` for each name in `order` into `stage.out` (the last one, the manifest,
    is the switch), then delete `remove`. A name may be a folder (a model repository): the old one is
    moved aside into the stage, the new one moved in. Returns the names removed. Raises OSError after
    rolling back, leaving `out` as it was."""
    out = stage.out
    stage.old.mkdir(exist_ok=True)
    existed = []
    for name in order:  # keep a link to every file that will change: the rollback's copy
        if os.path.lexists(out / name):
            if not _is_dir(out / name):
                _keep_copy(out / name, stage.old / name)
            existed.append(name)
    journal = {"pid": os.getpid(), "replace": list(order), "existed": existed, "committed": False}
    key = _journal_key(create=True)
    _write_journal(stage.dir, journal, key)
    with _signals_deferred():  # Ctrl-C lands before the first rename or after the last removal

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
        _write_journal(stage.dir, journal, key)
        stage.published = True
        removed = []
        for name in remove:  # not listed by the new manifest: garbage now, gone
            if name not in order and os.path.lexists(out / name):
                shutil.rmtree(out / name) if _is_dir(out / name) else os.unlink(out / name)
                removed.append(name)
    return removed


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
    folders (ones no live process holds). Only `export` calls it, holding the folder's lock.
    A journal acts only when it is this user's (see the module's docstring); every name is
    re-checked against the folder before anything moves. Returns what was done, one line each
    (also logged)."""
    out = Path(out)
    done: list[str] = []
    try:
        stages = [p for p in out.iterdir() if p.name.startswith(STAGE_PREFIX) and _is_dir(p)]
    except OSError:
        return done
    for stage in stages:
        if not (stage / "pid").exists() and _age_s(stage) < 3600:
            continue  # being set up by a live export this very moment
        signed, why = _signed_stage(stage)
        if not signed and not os.path.lexists(stage / JOURNAL_NAME):  # not ours: not even locked (no file made)
            what = f"left {stage.name} alone: {why} (nothing was changed)"
            done.append(what)
            log(what)
            continue
        try:
            lock = _try_lock(stage / LOCK_NAME)
        except OSError:
            what = f"left {stage.name} alone: its lock is not a plain file (remove the folder by hand)"
            done.append(what)
            log(what)
            continue
        if lock is None:
            continue  # a live export owns it
        try:
            what = f"removed stale staging folder {stage.name} (its export was interrupted)"
            journal_path = stage / JOURNAL_NAME
            if os.path.lexists(journal_path):
                if not journal_path.is_file() or journal_path.is_symlink():
                    raise _Untrusted("its journal is not a plain file")
                journal, why = _trusted_journal(stage, journal_path.read_bytes()[:1 << 20])
                if journal is None:
                    raise _Untrusted(why)
                if not journal["committed"]:
                    _check_rollback(out, stage / "old", journal["replace"], journal["existed"])
                    _rollback(out, stage / "old", journal["replace"], journal["existed"])
                    what = (f"an export into {out} was killed while publishing (pid {journal.get('pid')}): "
                            f"previous artifacts restored ({', '.join(journal['replace'])})")
            shutil.rmtree(stage, ignore_errors=True)
            done.append(what)
            log(what)
        except _Untrusted as exc:
            what = f"left {stage.name} alone: {exc} (nothing was changed; remove the folder by hand)"
            done.append(what)
            log(what)
        except (OSError, ValueError, KeyError) as exc:
            log(f"cannot clean up {stage}: {exc}")
        finally:
            lock.close()
    return done


class _Untrusted(Exception):
    pass


def _check_rollback(out: Path, old: Path, names, existed) -> None:
    """Every path a rollback would touch is a plain entry of `out` or of the stage's old/ (no link
    followed, nothing outside), or _Untrusted before anything moves."""
    if not _is_dir(old) and existed:
        raise _Untrusted("its old/ folder is missing or a link")
    for name in names:
        kept = old / name
        if name in existed and os.path.lexists(kept) and kept.is_symlink():
            raise _Untrusted(f"its copy of {name!r} is a link")
        if (out / name).is_symlink() and name not in existed:
            raise _Untrusted(f"{name!r} in the folder is a link the export did not write")
