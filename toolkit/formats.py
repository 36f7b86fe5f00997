"""What a model file is, read from its bytes: every reader checks that the bytes are the format the
manifest (or the file's suffix) says, so a `.ort` holding ONNX, or an `.onnx` holding ORT, is refused
before any runtime sees it (a mobile build that loads only ORT format would refuse the first; `onnx`
refuses the second). Standard library only: the edge side uses it."""

from __future__ import annotations

from enum import Enum

from toolkit.errors import ManifestError
from toolkit.targets import TARGETS


class Kind(str, Enum):
    """What a model file's bytes are (a target's `kind`, toolkit.targets): each has a check in sniff()."""

    ONNX = "onnx"
    ORT = "ort"
    TFLITE = "tflite"
    PTE = "pte"
    ZIP = "zip"
    IR = "ir"

    def __str__(self) -> str:
        return self.value


KIND_NAMES = {Kind.ONNX: "an ONNX model (protobuf)", Kind.ORT: "an ONNX Runtime .ort model (flatbuffer ORTM)",
              Kind.TFLITE: "a LiteRT model (flatbuffer TFL3)", Kind.PTE: "an ExecuTorch program (flatbuffer ET..)",
              Kind.ZIP: "a TorchScript archive (zip)", Kind.IR: "an OpenVINO IR (XML)"}
# format (as the manifest names it) -> the kind of file its bytes must be; a target whose kind has no
# member here fails at import (ValueError), so a new kind cannot go unchecked
KIND_OF_FORMAT = {t.name: Kind(t.kind) for t in TARGETS}


def sniff(data: bytes) -> Kind | None:
    """The kind of model these bytes are, by their header alone (nothing is parsed)."""
    if len(data) < 8:
        return None
    ident = data[4:8]
    if ident == b"ORTM":
        return Kind.ORT
    if ident == b"TFL3":
        return Kind.TFLITE
    if ident[:2] == b"ET" and ident[2:4].isdigit():
        return Kind.PTE
    if data[:4] == b"PK\x03\x04":
        return Kind.ZIP
    if data.lstrip()[:5] == b"<?xml":  # OpenVINO writes its IR with the XML declaration first
        return Kind.IR
    # An ONNX ModelProto is a protobuf: its first byte is the tag of one of ModelProto's fields with
    # its wire type. Serializers write fields in number order, so ours and every common exporter
    # start 0x08 (ir_version); a model without it starts with a later field's tag.
    if data[0] in _MODELPROTO_TAGS:
        return Kind.ONNX
    return None


# ir_version (1, varint), producer_name..doc_string (2-4, 6: bytes), model_version (5, varint), graph (7),
# opset_import (8), metadata_props (14), training_info (20), functions (25), configuration (26) (onnx.proto's
# numbers): 20+ take a two-byte tag whose first byte is one of these.
_MODELPROTO_TAGS = {0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA, 0xD2}


def check_kind(data: bytes, fmt: str, name: str) -> None:
    """ManifestError in one line unless `data` is a file of `fmt` (a manifest format)."""
    want = KIND_OF_FORMAT.get(fmt)
    if want is None:
        return
    got = sniff(data)
    if got != want:
        found = KIND_NAMES[got] if got else "not a model file mnisttk knows"
        raise ManifestError(f"{name}: listed as {fmt}, but its bytes are {found}; refused")
