"""Every default text output fits a 120-column terminal: `fit` wraps the lines that would not, each
continuation indented under its line (tables are built to fit; long notes and lists are wrapped here).
Standard library only."""

from __future__ import annotations

import textwrap

WIDTH = 120


def fit(text: str, width: int = WIDTH) -> str:
    """`text` with every line longer than `width` wrapped at spaces, continuations indented 4 past
    the line's own indent; lines that fit are left exactly as they are."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip(" "))]
        out += textwrap.wrap(line, width, initial_indent="", subsequent_indent=indent + "    ",
                             break_on_hyphens=False, drop_whitespace=True) or [line[:width]]
    return "\n".join(out)
