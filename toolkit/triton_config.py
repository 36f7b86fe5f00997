"""Triton's `config.pbtxt`, read and checked against the model it serves. Standard library only
(the edge side): a small reader of protobuf text format, enough for a model configuration.

A model repository is support, not the artifact: verify runs `model.onnx`, and the configuration
must describe that very model (platform, batching, every input and output's name, type and dims),
or Triton would refuse it or feed it the wrong tensors."""

from __future__ import annotations

import re

from toolkit.errors import ManifestError

MAX_CONFIG_BYTES = 64 * 1024
_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+')
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8",
                 "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


class _Bad(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise _Bad(f"unexpected character {text[pos]!r}")
        tok = m.group()
        pos = m.end()
        if not tok.isspace() and not tok.startswith("#"):
            out.append(tok)
    return out


def _value(tok: str):
    if tok.startswith('"'):
        return tok[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    return tok  # an enum name (TYPE_FP32, KIND_CPU) or true/false


def _message(toks: list[str], i: int, end: str | None) -> tuple[dict, int]:
    fields: dict = {}
    while i < len(toks) and toks[i] != end:
        name = toks[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _Bad(f"expected a field name, found {name!r}")
        i += 1
        if i < len(toks) and toks[i] == ":":
            i += 1
        if i >= len(toks):
            raise _Bad(f"field {name} has no value")
        if toks[i] == "[":
            i += 1
            items: list = []
            while toks[i] != "]":
                if toks[i] == "{":
                    item, i = _message(toks, i + 1, "}")
                    i += 1
                else:
                    item, i = _value(toks[i]), i + 1
                items.append(item)
                if toks[i] == ",":
                    i += 1
            value, i = items, i + 1
        elif toks[i] == "{":
            message, i = _message(toks, i + 1, "}")
            value, i = [message], i + 1
        else:
            value, i = [_value(toks[i])], i + 1
        fields.setdefault(name, []).extend(value)
    if end is not None and i >= len(toks):
        raise _Bad(f"missing '{end}'")
    return fields, i


def parse(text: str) -> dict:
    """{field: [values]} (a message value is itself such a dict); ValueError on malformed text."""
    try:
        fields, _ = _message(_tokens(text), 0, None)
    except IndexError:
        raise _Bad("the text ends inside a value") from None
    except RecursionError:
        raise _Bad("nested too deeply") from None
    return fields


def _one(fields: dict, name: str, default=None):
    values = fields.get(name, [])
    return values[-1] if values else default


def check(config_bytes: bytes, config_name: str, model_name: str, model) -> None:
    """ManifestError in one line unless the configuration serves `model` (a toolkit.runtimes.ort_session.Model
    of `<model_name>/1/model.onnx`) as mnisttk exports it."""
    if len(config_bytes) > MAX_CONFIG_BYTES:
        raise ManifestError(f"{config_name}: {len(config_bytes):,} bytes is too large for a Triton configuration")
    try:
        cfg = parse(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{config_name}: not a readable Triton configuration ({exc})") from None

    def bad(what: str):
        raise ManifestError(f"{config_name}: {what}; Triton would not serve {model_name}/1/model.onnx as exported")

    if _one(cfg, "name", model_name) != model_name:
        bad(f"name {_one(cfg, 'name')!r} is not the model's folder {model_name!r}")
    if _one(cfg, "platform") != "onnxruntime_onnx" and _one(cfg, "backend") != "onnxruntime":
        bad(f"platform {_one(cfg, 'platform')!r} is not onnxruntime_onnx")
    max_batch = _one(cfg, "max_batch_size", 0)
    if not isinstance(max_batch, int) or max_batch < 1:
        bad(f"max_batch_size {max_batch!r}: the model's batch axis must be Triton's (>= 1)")
    session = model.session
    for kind, declared, actual in (("input", cfg.get("input", []), session.get_inputs()),
                                   ("output", cfg.get("output", []), session.get_outputs())):
        if len(declared) != len(actual):
            bad(f"{len(declared)} {kind}s declared, the model has {len(actual)}")
        for d, a in zip(declared, actual, strict=False):
            if not isinstance(d, dict):
                bad(f"an {kind} is not a message")
            want_type = ORT_TO_TRITON.get(a.type, a.type)
            dims = [int(x) for x in a.shape[1:]] if all(isinstance(x, int) for x in a.shape[1:]) else None
            if _one(d, "name") != a.name:
                bad(f"{kind} name {_one(d, 'name')!r}, the model's is {a.name!r}")
            if _one(d, "data_type") != want_type:
                bad(f"{kind} {a.name!r} is {_one(d, 'data_type')}, the model's is {want_type}")
            if dims is not None and d.get("dims") != dims:
                bad(f"{kind} {a.name!r} dims {d.get('dims')}, the model's are {dims}")
