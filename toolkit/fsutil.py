"""Atomic file writes and hashing: an interrupted write never leaves half a file
nor destroys the previous one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class TooLarge(OSError):
    """A file read for hashing grew past the bound it was read under."""


def sha256_file(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """The file's SHA-256; with `max_bytes`, TooLarge as soon as more than that has been read (a file
    that is, or grows, larger is never hashed to its end)."""
    h = hashlib.sha256()
    seen = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            seen += len(block)
            if max_bytes is not None and seen > max_bytes:
                raise TooLarge(f"{path}: more than {max_bytes:,} bytes")
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove we can write there, or raise OSError."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
        pass
    return path


def regular_file(path: str | os.PathLike, error: type[Exception], what: str, max_bytes: int,
                 missing: str = "no such file", not_regular: str = "not a regular file") -> Path:
    """`path` if it is a regular file of at most `max_bytes`, else `error` with one line naming the fault
    (every reader of untrusted files starts here: no FIFOs, devices, folders or giants)."""
    import errno
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise error(f"{path}: {missing}") from None
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL in the name
        raise error(f"{path}: not a usable file name") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever; a device never ends
        raise error(f"{path}: {not_regular}")
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size:,} bytes is too large for {what}; refused")
    return path


def json_safe(obj):
    """JSON has no NaN/Infinity: a non-finite measurement is written as null (its row says why)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
