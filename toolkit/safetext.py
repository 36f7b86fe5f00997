"""The one rendering edge for text that came from a file (a manifest, an outputs file, a model's
metadata, node names, class names, file names, machine notes): every such string passes `shown` before
it reaches a terminal, Markdown, the HTML page or a plot, so an escape sequence, a carriage return or a
newline inside a field cannot clear the screen or forge a line (a `PASS` over a failing run).
Standard library only."""

from __future__ import annotations

from typing import Any


def shown(text: str) -> str:
    """`text` with every character that is not printable (control and format characters, line and
    paragraph separators, bidirectional overrides) written as its Python escape: ESC -> `\\x1b`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def shown_tree(obj: Any) -> Any:
    """A result (dicts, lists, tuples) with every string in it, keys included, passed through `shown`:
    what the text, Markdown, HTML and plot renderers are given. JSON output keeps the raw values (JSON
    escapes control characters itself)."""
    if isinstance(obj, str):
        return shown(obj)
    if isinstance(obj, dict):
        return {shown(k) if isinstance(k, str) else k: shown_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shown_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(shown_tree(v) for v in obj)
    return obj


def plot_text() -> dict:
    """matplotlib settings for a plot whose labels come from files: `$…$` is text, never mathtext (a node
    named `$\\foo{$` would otherwise stop the plot with a parse error)."""
    return {"text.parse_math": False, "text.usetex": False}
