"""reference.npz: the fp32 PyTorch logits and labels of the test set, read safely.

It is untrusted input on the edge: member names, sizes, dtypes and shapes are checked
from the zip directory before anything is decompressed, and no member may be read past
what the test set needs (a zip bomb stops at that bound). numpy and the standard library only.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from toolkit.errors import ManifestError, first_line

MEMBERS = {"logits.npy", "labels.npy", "test_sha256.npy", "arch.npy", "non_digit_logits.npy"}
N_NON_DIGITS = 400  # toolkit.ood.non_digits(): the float model's logits on them (optional member)
REQUIRED = {"logits.npy", "labels.npy", "test_sha256.npy"}
NPY_HEADER_MAX = 1024  # a .npy header is 128 bytes or so


def _member_limit(name: str, n_test: int, c: int) -> int:
    return NPY_HEADER_MAX + {"logits.npy": n_test * c * 8, "labels.npy": n_test * 8,
                             "non_digit_logits.npy": N_NON_DIGITS * c * 8}.get(name, 1024)


def read_reference(path: Path, n_test: int, num_classes: int = 10) -> dict:
    """{'logits': float64 n×C (C: the export's classes), 'labels': int64 n, 'test_sha256': str}; ManifestError in one line otherwise."""
    path = Path(path)

    def bad(what: str):
        return ManifestError(f"{path}: not a usable mnisttk reference ({what}); re-run `mnisttk export`")

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise bad(f"not an .npz archive: {first_line(exc, 80)}") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        unknown = set(infos) - MEMBERS
        if unknown:
            raise bad(f"unexpected member {sorted(unknown)[0]!r}")
        for name, info in infos.items():
            limit = _member_limit(name, n_test, num_classes)
            if info.file_size > limit:
                raise bad(f"{name} declares {info.file_size:,} bytes, more than {limit:,} for {n_test:,} test images")
        missing = REQUIRED - set(infos)
        if missing:
            raise bad(f"no {sorted(missing)[0][:-4]!r} array")
        arrays = {}
        for name, info in infos.items():
            limit = _member_limit(name, n_test, num_classes)
            try:
                with zf.open(info) as f:
                    raw = f.read(limit + 1)  # the directory may lie: never read past the bound
                if len(raw) > limit:
                    raise bad(f"{name} holds more than {limit:,} bytes")
                arrays[name[:-4]] = np.load(io.BytesIO(raw), allow_pickle=False)
            except ManifestError:
                raise
            except Exception as exc:  # noqa: BLE001 - zlib.error, BadZipFile, ValueError from np.load (pickles refused)
                raise bad(f"{name}: {first_line(exc, 80)}") from None
    logits, labels, sha = arrays["logits"], arrays["labels"], arrays["test_sha256"]
    if logits.dtype.kind != "f" or logits.shape != (n_test, num_classes):
        raise bad(f"logits are {logits.dtype} {list(logits.shape)}, expected float [{n_test}, {num_classes}]")
    if not np.isfinite(logits).all():
        raise bad("logits hold NaN or infinite values")
    if labels.dtype.kind not in "iu" or labels.shape != (n_test,):
        raise bad(f"labels are {labels.dtype} {list(labels.shape)}, expected integer [{n_test}]")
    if sha.dtype.kind != "U" or sha.shape != () or not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise bad("test_sha256 is not one SHA-256 string")
    nd = arrays.get("non_digit_logits")
    if nd is not None and (nd.dtype.kind != "f" or nd.shape != (N_NON_DIGITS, num_classes) or not np.isfinite(nd).all()):
        raise bad(f"non_digit_logits are {nd.dtype} {list(nd.shape)}, expected finite float "
                  f"[{N_NON_DIGITS}, {num_classes}]")
    return {"logits": logits.astype(np.float64), "labels": labels.astype(np.int64), "test_sha256": str(sha),
            "non_digit_logits": None if nd is None else nd.astype(np.float64)}
