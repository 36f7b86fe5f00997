"""What every verb's click layer shares: option builders, the one-line error edge, JSON and text output.

Torch-side modules are imported inside the commands that need them, so that
`mnisttk verify` and `mnisttk predict` run where only onnxruntime and numpy exist.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

# torch's C++ side warns (e.g. that quantized tensors are deprecated) on stderr at every
# TorchScript int8 load; users can do nothing about it. Must be set before torch loads.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import contextlib

import click

from toolkit.config import ExportConfig, Gates, QuantConfig, TrainConfig, VerifyConfig
from toolkit.errors import ToolkitError
from toolkit.fsutil import json_safe
from toolkit.safetext import shown

TRAIN, EXPORT, QUANT = TrainConfig(), ExportConfig(), QuantConfig()  # the option defaults: one source


GATES, VERIFY = Gates(), VerifyConfig()


TRAIN_STACK = {"torch", "torchvision", "onnx", "onnxscript", "tqdm"}  # the [train] extra


_QUIET = False  # -q/--quiet on any verb: no logs (errors and results still shown)


def is_quiet() -> bool:
    return _QUIET


def log(message: str) -> None:
    """Logs and progress go to stderr; results go to stdout."""
    if not _QUIET:
        click.echo(message, err=True)


def quiet_option(func):
    def set_quiet(ctx, param, value):
        global _QUIET
        _QUIET = bool(value)
        return value

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True, callback=set_quiet,
                        help="No logs or progress bars on stderr (errors and results still shown).")(func)


def old_spelling(old: str, dest: str, **kwargs):
    """An option's previous name, kept hidden for one release: it sets `dest` like the new one."""
    return click.option(old, f"{dest}__old", hidden=True, default=None, **kwargs)


def merge_old_spellings(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for key in [k for k in kwargs if k.endswith("__old")]:
            value = kwargs.pop(key)
            if value not in (None, ()):
                kwargs[key[: -len("__old")]] = value
        return func(*args, **kwargs)

    return wrapper


def toolkit_errors(func):
    """Turn library errors into `Error: …` (exit 1) at the edge."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ToolkitError, ModuleNotFoundError, KeyboardInterrupt, OSError) as exc:
            _debug_traceback(exc)
            return _one_line(exc)

    return wrapper


def _debug_traceback(exc: BaseException) -> None:
    """MNISTTK_DEBUG=1: the whole chain behind an `Error:` line (what `from None` hides included) on
    stderr, for a bug report; the one line follows as always."""
    if os.environ.get("MNISTTK_DEBUG") != "1":
        return
    import traceback

    seen: set = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the context `from None` suppressed, shown again
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__
    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


def _one_line(exc: BaseException):
    """A caught error as click's one `Error:` line (exit 1)."""
    if isinstance(exc, ToolkitError):
        raise click.ClickException(printable(str(exc))) from None
    if isinstance(exc, ModuleNotFoundError):  # an edge install (no [train] extra) asked to train or export
        if (exc.name or "").split(".")[0] not in TRAIN_STACK:
            raise exc
        raise click.ClickException(
            f"`mnisttk {click.get_current_context().info_name}` needs the training stack ({exc.name} is not "
            "installed): pip install 'mnisttk[train]' (`mnisttk env` shows what is here)") from None
    if isinstance(exc, KeyboardInterrupt):
        raise click.ClickException("interrupted; existing files were left as they were") from None
    assert isinstance(exc, OSError)  # a name too long, a folder gone mid-run: one line, never a traceback
    where = f"{exc.filename}: " if exc.filename else ""
    raise click.ClickException(printable(f"{where}{exc.strerror or exc}")) from None


def printable(text: str) -> str:
    """Control characters shown as escapes (toolkit.safetext, the one rendering edge): a file name
    holding a newline or ESC[2K cannot forge a line of output or erase one on a terminal."""
    return shown(text)


# What an output option must never overwrite: an input by its kind (an image, a model, an array).
INPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".npy", ".npz",
                  ".onnx", ".ort", ".tflite", ".pte", ".pt", ".pth", ".xml", ".bin"}
STDOUT_OPTIONS = {"--json", "--markdown"}  # the outputs for which `-` means stdout; elsewhere it is refused
MAX_REPORT_BYTES = 64 * 1024 * 1024  # an existing --json file larger than this is not a report of ours


def check_outputs(outputs: list, protected: tuple | list = ()) -> None:
    """Before any work: each (option, path, kind) output is a file that can be written, and never an
    input. `protected`: paths the verb reads (images, a model, an export's listed files). kind: "json",
    "markdown" or "png". A path in a folder that does not exist is refused (no folder tree is made)."""
    resolved = set()
    for p in protected:
        with contextlib.suppress(OSError, RuntimeError):
            resolved.add(Path(p).resolve())
    written: dict = {}
    for option, path, kind in outputs:
        if path is None:
            continue
        if str(path) == "-":
            if option not in STDOUT_OPTIONS:
                raise click.UsageError(f"{option} -: {option} writes a file, not stdout; name the file to write")
            continue
        path = Path(path)
        try:
            key = path.resolve()
        except (OSError, RuntimeError):
            key = path
        if key in written:
            raise click.UsageError(f"{option} {path}: {written[key]} writes the same file; give each output its own")
        written[key] = option
        suffix = path.suffix.lower()
        if suffix in INPUT_SUFFIXES and suffix != f".{kind}":  # a .png plot may replace a .png plot
            raise click.UsageError(f"{option} {path}: names an input file (a {suffix} file), not a {kind} report "
                                   f"to write; write {option}=FILE, or put {option} after the inputs")
        try:
            if path.resolve() in resolved:
                raise click.UsageError(f"{option} {path}: is one of this command's inputs; it will not be overwritten")
        except (OSError, RuntimeError):
            pass
        if kind == "json" and path.is_file():
            try:
                with open(path, "rb") as f:
                    json.loads(f.read(MAX_REPORT_BYTES + 1)[:MAX_REPORT_BYTES])
            except (ValueError, OSError, RecursionError):  # deeply nested JSON: not a report of ours either
                raise ToolkitError(f"{option} {path}: exists and is not a JSON file; refusing to overwrite it "
                                   "(remove it, or choose another name)") from None
        _check_output_path(path)


def gate_options(func=None, *, clipped: bool = True):
    """verify's gates, one set of options wherever they apply (verify; export: fp32 parity and --search;
    compare, which has no int8 output to inspect: clipped=False)."""
    if func is None:
        return functools.partial(gate_options, clipped=clipped)
    options = (
        click.option("--fp32-atol", type=click.FloatRange(min=0), default=GATES.fp32_max_abs_logit_diff,
                     show_default=True, help="fp32 max |Δlogit| against the reference."),
        click.option("--int8-max-drop", type=click.FloatRange(min=0), default=GATES.int8_max_drop_points,
                     show_default=True, help="int8 accuracy loss allowed, in points."),
        click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=GATES.int8_min_agreement_pct,
                     show_default=True, help="int8 top-1 agreement with the reference required, in %."),
        click.option("--int8-max-clipped", type=click.FloatRange(0, 100), default=GATES.int8_max_clipped_top_pct,
                     show_default=True, help="int8 rows with a quantized output: % of images whose top logit may sit "
                                             "at the output's int8 limit (a clipped score)."),
        click.option("--int8-min-ood-agreement", type=click.FloatRange(0, 100),
                     default=GATES.int8_min_ood_agreement_pct, show_default=True,
                     help="int8 rows: % of test images, and of synthetic non-digits, on which the \"not a digit\" "
                          "decision must match the float reference's."),
    )
    for option in reversed(options if clipped else options[:3]):
        func = option(func)
    return func


def data_dir_option(func):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder with the four MNIST IDX files (default: $MNISTTK_DATA or ~/.cache/mnisttk).",
    )(func)


def _parse_targets(ctx, param, value):
    """--targets: a comma list of formats, or all; anything else is a usage error naming the valid ones."""
    from toolkit.config import FORMATS

    items = [t.strip() for t in (value or "").split(",") if t.strip()]
    if items == ["all"]:
        return FORMATS
    bad = [t for t in items if t not in FORMATS]
    if not items or bad:
        what = f"{bad[0]!r} is not a target" if bad else "no target given"
        raise click.BadParameter(f"{what}; choose from {', '.join(FORMATS)} or all")
    return tuple(f for f in FORMATS if f in items)


def json_option(what: str):
    """One convention for every verb: `--json` (or `--json -`) prints JSON to stdout, `--json FILE`
    writes it (atomically); with JSON on stdout the text report goes to stderr."""
    return click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="[FILE|-]",
                        help=f"{what} as JSON: to stdout (bare --json, or -) or into FILE.")


def emit_json(obj, dest) -> None:
    text = json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n"
    if dest is None:
        return
    if str(dest) == "-":
        click.echo(text, nl=False)
        return
    from toolkit.fsutil import atomic_write_bytes

    try:
        atomic_write_bytes(Path(dest), text.encode())
    except OSError as exc:
        raise ToolkitError(f"cannot write {dest}: {exc.strerror or exc}") from None


def json_to_stdout(dest) -> bool:
    return dest is not None and str(dest) == "-"


def export_files(folder: Path, manifest: dict) -> list[Path]:
    """The files of an export that a report must never overwrite."""
    names = [a["file"] for a in manifest["artifacts"]] + [manifest["reference"]["file"], "manifest.json"]
    names += [f["file"] for f in manifest.get("support_files", [])]
    return [folder / n for n in names]


def _check_output_path(path) -> None:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a folder, not a file to write")
    if not parent.is_dir():
        raise ToolkitError(f"{path}: folder {parent} does not exist; nothing was run")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ToolkitError(f"{path}: not writable; nothing was run")
