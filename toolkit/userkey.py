"""This user's secret (32 random bytes, mode 0600 in a 0700 folder, outside any export folder) and the
MACs made with it: what this user's mnisttk wrote on this machine (an export's journal and stage marks,
a checkpoint's model reference) can be told from what someone else wrote, which is only ever data.

The key (`$XDG_STATE_HOME/mnisttk/journal.key`, else `~/.local/state/…`) is read with O_NOFOLLOW and
O_NONBLOCK: a link, a FIFO, a file of another size or one that others can read is refused in one line
(JournalKeyError), never followed or used. Standard library only."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
from pathlib import Path

KEY_BYTES = 32


def key_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "mnisttk" / "journal.key"


class JournalKeyError(OSError):
    """The key exists but is not a private regular file of 32 bytes: refused, never used."""


def _read_key(path: Path) -> bytes | None:
    """The key at `path`, None if there is none; JournalKeyError if something else is there."""
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JournalKeyError(exc.errno, f"the journal key {path} is a symbolic link; refused (remove it)") from None
        raise JournalKeyError(exc.errno, f"the journal key {path} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalKeyError(errno.EINVAL, f"the journal key {path} is not a regular file; refused (remove it)")
        if st.st_mode & 0o077:
            raise JournalKeyError(errno.EPERM, f"the journal key {path} is readable by others (mode "
                                               f"{stat.S_IMODE(st.st_mode):04o}); refused (chmod 600 it, or remove it)")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise JournalKeyError(errno.EINVAL, f"the journal key {path} is {len(data)} bytes, not {KEY_BYTES}; refused "
                                            "(remove it: a new one is made)")
    return data


def user_key(create: bool) -> bytes | None:
    """This user's secret. None: there is none (and `create` is off, or no home can hold one)."""
    path = key_path()
    data = _read_key(path)
    if data is not None or not create:
        return data
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = os.urandom(KEY_BYTES)
        # written whole under a private name, then linked into place: a process that finds the key (several
        # trainings starting at once on a new machine) never reads it half-written
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # fails if another process linked its key first
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return key
    except FileExistsError:
        return user_key(create=False)  # another process made it this very moment: that one is the key
    except OSError:
        return None  # no writable home: nothing is signed, and nothing unsigned is acted on


def mac(purpose: str, body: object, *, create: bool = False) -> str | None:
    """The MAC of `body` (canonical JSON) for `purpose` under this user's key; None without a key."""
    try:
        key = user_key(create)
    except JournalKeyError:
        return None
    if key is None:
        return None
    message = json.dumps([purpose, body], sort_keys=True, separators=(",", ":"), default=str).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_here(purpose: str, body: object, tag: object) -> bool:
    """Whether `tag` is this user's MAC of `body` for `purpose` (a missing or refused key: False)."""
    if not isinstance(tag, str) or len(tag) != 64:
        return False
    expected = mac(purpose, body)
    return expected is not None and hmac.compare_digest(tag, expected)
