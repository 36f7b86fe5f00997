"""`mnisttk compare`: the same artifacts run twice (two machines, two versions, two runs), image by
image. Each saved verify run (toolkit.outputs) after the first is judged against the first, per
artifact × runtime row: agreement, the flipped images, max |Δlogit|, the accuracy difference with
its exact McNemar test, latency and throughput as ratios — and the gates verify uses (fp32: identical
predictions, logits within the tolerance; int8: agreement and accuracy difference). Timing is shown,
never gated. Edge side: numpy only.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from toolkit.config import Gates
from toolkit.gates import REDUCED_PRECISIONS, Measurement, evaluate, judged_precision
from toolkit.metrics import paired_accuracy_diff
from toolkit.outputs import Outputs, OutputsError

MAX_LISTED_FLIPS = 1000  # flipped indices kept per cell in JSON (the count is always exact)


def check_comparable(base: Outputs, other: Outputs) -> None:
    """Refuse, in one line naming the files, runs on different test sets, of different bytes, a row
    whose outputs do not say which bytes they came from, and a run compared with itself."""
    if other.doc.get("sha256") == base.doc.get("sha256"):
        raise OutputsError(f"{other.path} is the same run as {base.path} (document SHA-256 "
                           f"{str(base.doc.get('sha256'))[:12]}…): compare two runs; refused")
    if other.test_sha256 != base.test_sha256 or not np.array_equal(other.labels, base.labels):
        raise OutputsError(f"{other.path} was run on another test set (SHA-256 {other.test_sha256[:12]}…) than "
                           f"{base.path} ({base.test_sha256[:12]}…); refused")
    theirs = other.rows
    for rid, row in base.rows.items():
        if row.get("is_reference") or rid not in theirs:
            continue
        a, b = row.get("artifact_sha256"), theirs[rid].get("artifact_sha256")
        for run, digest in ((base, a), (other, b)):
            if rid in run.logits and not (isinstance(digest, str) and len(digest) == 64):
                raise OutputsError(f"{rid}: {run.path} gives outputs without the SHA-256 of the artifact that made "
                                   "them; refused")
        if a != b and rid in base.logits and rid in other.logits:
            raise OutputsError(f"{rid}: {other.path} ran other bytes (SHA-256 {str(b)[:12]}…) than {base.path} "
                               f"({str(a)[:12]}…); refused")
        if rid in base.logits and rid in other.logits and base.logits[rid].shape != other.logits[rid].shape:
            raise OutputsError(f"{rid}: {other.path} holds {other.logits[rid].shape[-1]} logits per image, {base.path} "
                               f"{base.logits[rid].shape[-1]}: outputs of models with other class counts; refused")


def compare_pair(base_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray, precision: str,
                 gates: Gates) -> dict:
    """One artifact's outputs on another run against the baseline's: what differs, and the gates."""
    n = len(labels)
    base_pred, pred = base_logits.argmax(1), logits.argmax(1)
    flipped = np.flatnonzero(pred != base_pred)
    base_right, right = int((base_pred == labels).sum()), int((pred == labels).sum())
    d = paired_accuracy_diff(labels, pred, base_pred)
    cell = {"agreement": (n - len(flipped)) / n, "flipped": int(len(flipped)),
            "flipped_indices": flipped[:MAX_LISTED_FLIPS].tolist(),
            "max_abs_logit_diff": float(np.abs(logits.astype(np.float64) - base_logits).max()),
            "accuracy_base": base_right / n, "accuracy": right / n, "acc_diff": d["diff"], "mcnemar_p": d["mcnemar_p"]}
    # Percentages from counts (100 * k / n), so a count exactly at a gate's limit lands on it. The
    # accuracy gate both ways: a run much better than its baseline is not doing the same job either.
    m = Measurement(precision=precision, flipped=cell["flipped"], max_abs_logit_diff=cell["max_abs_logit_diff"],
                    accuracy_drop_points=100 * abs(base_right - right) / n,
                    agreement_pct=100 * (n - len(flipped)) / n)
    reasons = evaluate(m, gates)
    cell["failed_gates"] = [r.gate.value for r in reasons]
    cell["reasons"] = [r.text() for r in reasons]
    cell["status"] = "fail" if reasons else "ok"
    return cell


def _judged_precision(rid: str, a: dict, b: dict) -> str:
    """The precision a row of two runs is compared at: a runtime's reduced default (e.g. OpenVINO's bf16)
    takes the reduced-precision gates only where both runs ran that row at the default in the precision
    its id names (onnx-fp32@openvino-bf16); anything else, the artifact's own precision's gates."""
    judged = {judged_precision(r["precision"], r.get("arithmetic"), r.get("ran_precision")) for r in (a, b)}
    if len(judged) == 1:
        p = judged.pop()
        if p in REDUCED_PRECISIONS and rid.endswith(f"-{p}"):
            return p
    return a["precision"]


def _ratio(a, b):
    return None if not a or not b else b / a


def _cpu_dependent(rid: str) -> bool:
    """A runtime's default-precision row (onnx-fp32@openvino-bf16): it exists only on CPUs with that mode."""
    return any(rid.endswith(f"-{p}") for p in REDUCED_PRECISIONS)


def compare_runs(runs: list[Outputs], gates: Gates, allow_missing: tuple = (), allow_failed: tuple = ()) -> dict:
    """Every run after the first against the first, per row (the reference row is reference.npz itself
    everywhere, so it is not compared). A row with outputs in one run and none in the other fails the
    comparison unless it is excused: absent there (skipped, or no such row) by a pattern of
    `allow_missing`, *failed* there only by a pattern of `allow_failed` (fnmatch, on the row id); a
    runtime's default-precision row absent from a run whose CPU has no such mode is only noted. Every
    excused row is listed in `excused`, and the verdict names them."""
    from fnmatch import fnmatchcase

    if len(runs) < 2:
        raise OutputsError("compare needs at least two outputs files")
    base = runs[0]
    for other in runs[1:]:
        check_comparable(base, other)
    ids: list[str] = []
    for run in runs:
        ids += [rid for rid, r in run.rows.items() if rid not in ids and not r.get("is_reference")]
    rows, failed, excused, compared = [], [], [], 0
    for rid in ids:
        info = next(run.rows[rid] for run in runs if rid in run.rows)
        row = {"id": rid, "name": info.get("name"), "runtime": info.get("runtime"), "precision": info["precision"],
               "artifact_sha256": info.get("artifact_sha256"), "cells": []}
        for k, other in enumerate(runs[1:], 1):
            if rid not in base.logits or rid not in other.logits:
                why = [f"{_name(run.path)}: {_absent(run, rid)}" for run in (base, other) if rid not in run.logits]
                one_side = rid in base.logits or rid in other.logits
                # a row that ran and failed there is not a row that was never run: it needs its own option
                failed_there = any(rid not in run.logits and (run.rows.get(rid) or {}).get("status") == "fail"
                                   for run in (base, other))
                option, patterns = ("--allow-failed", allow_failed) if failed_there else \
                    ("--allow-missing", allow_missing)
                allowed = any(fnmatchcase(rid, pat) for pat in patterns)
                no_such_mode = _cpu_dependent(rid) and any(rid not in run.rows for run in (base, other))
                status = "fail" if one_side and not allowed and not no_such_mode else "absent"
                if no_such_mode:
                    why.append("a runtime's default-precision row: it exists only on CPUs with that mode")
                elif allowed and one_side:
                    why.append(f"allowed by {option}")
                    excused.append(f"{rid} on {_name(other.path)} ({'failed' if failed_there else 'absent'} "
                                   f"there, {option})")
                row["cells"].append({"run": k, "status": status, "reasons": why, "missing": True})
                if status == "fail":
                    failed.append(f"{rid} on {_name(other.path)}: outputs in one run only ({'; '.join(why)}); "
                                  f"{option} {rid} to accept")
                continue
            b_row, o_row = base.rows[rid], other.rows[rid]
            cell = {"run": k, **compare_pair(base.logits[rid], other.logits[rid], base.labels,
                                             _judged_precision(rid, b_row, o_row), gates)}
            cell["latency_ratio"] = _ratio((b_row.get("latency_us") or {}).get("p50"),
                                           (o_row.get("latency_us") or {}).get("p50"))
            cell["throughput_ratio"] = _ratio(b_row.get("throughput"), o_row.get("throughput"))
            compared += 1
            if cell["status"] == "fail":
                failed.append(f"{rid} on {_name(other.path)}: {'; '.join(cell['reasons'])}")
            row["cells"].append(cell)
        rows.append(row)
    if not compared:
        raise OutputsError(f"no artifact produced outputs in both {base.path} and the other run(s); nothing to compare")
    return {"kind": "mnisttk-compare", "schema_version": 1, "passed": not failed, "failed": failed,
            "n_test": int(len(base.labels)), "test_sha256": base.test_sha256, "gates": asdict(gates),
            "runs": [{"file": run.path, "label": run.label(), "machine": run.doc.get("machine"),
                      "created": run.doc.get("created"), "mnisttk": run.doc.get("mnisttk"),
                      "verify_passed": run.doc.get("passed")} for run in runs],
            "cells_compared": compared, "excused": excused, "rows": rows}


def _name(path: str) -> str:
    return Path(path).name


def _absent(run: Outputs, rid: str) -> str:
    r = run.rows.get(rid)
    if r is None:
        return "no such row"
    return f"row {r.get('status')}, no outputs" if r.get("status") != "ok" else "no outputs"


# ---- rendering --------------------------------------------------------------------------------------

def _fmt_cell_short(c: dict) -> str:
    if c.get("missing"):
        return "MISSING" if c["status"] == "fail" else "—"
    state = "FAIL" if c["status"] == "fail" else "ok"
    return f"{state} {c['agreement'] * 100:.2f}% {c['flipped']}fl {c['max_abs_logit_diff']:.0e}"


def _pair_lines(result: dict) -> list[list[str]]:
    head = ["row", "status", "agree %", "flips", "max|Δlogit|", "acc base %", "acc %", "McNemar p", "p50 ×",
            "img/s ×"]
    lines = [head]
    for r in result["rows"]:
        c = r["cells"][0]
        if c.get("missing"):
            lines.append([r["id"], "MISSING" if c["status"] == "fail" else "absent"] + ["—"] * (len(head) - 2))
            continue
        lines.append([r["id"], "FAIL" if c["status"] == "fail" else "ok", f"{c['agreement'] * 100:.2f}",
                      str(c["flipped"]), f"{c['max_abs_logit_diff']:.1e}", f"{c['accuracy_base'] * 100:.2f}",
                      f"{c['accuracy'] * 100:.2f}", f"{c['mcnemar_p']:.3g}",
                      "—" if c.get("latency_ratio") is None else f"{c['latency_ratio']:.2f}",
                      "—" if c.get("throughput_ratio") is None else f"{c['throughput_ratio']:.2f}"])
    return lines


def _matrix_lines(result: dict) -> list[list[str]]:
    head = ["row"] + [f"[{k}]" for k in range(1, len(result["runs"]))]
    return [head] + [[r["id"]] + [_fmt_cell_short(c) for c in r["cells"]] for r in result["rows"]]


def _grid(lines: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell: the first `left` read as text (left-aligned), the rest as
    figures (right-aligned)."""
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
           for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _notes(result: dict) -> list[str]:
    notes = [f"[{k}] {run['label']}" + (" (baseline)" if k == 0 else "") for k, run in enumerate(result["runs"])]
    for r in result["rows"]:
        for c in r["cells"]:
            where = f"{r['id']} [{c['run']}]"
            if c.get("missing"):
                state = "FAIL: outputs in one run only" if c["status"] == "fail" else "not compared"
                notes.append(f"{where}: {state} ({'; '.join(c['reasons'])})")
                continue
            if c["flipped"]:
                shown = ", ".join(str(i) for i in c["flipped_indices"][:20])
                more = f" … ({c['flipped']} in all)" if c["flipped"] > 20 else ""
                notes.append(f"{where}: flipped test images {shown}{more}")
            for reason in c["reasons"]:
                notes.append(f"{where}: FAIL: {reason}")
    return notes


def verdict(result: dict) -> str:
    n = result["cells_compared"]
    if not result["passed"]:
        return "FAIL: " + "; ".join(result["failed"])
    excused = result.get("excused") or []
    also = f"; excused, not compared: {', '.join(excused)}" if excused else ""
    return f"PASS ({n} artifact run(s) compared, every one within the gates{also})"


def _gates_line(result: dict) -> str:
    g = result["gates"]
    return (f"gates (each run against [0]): fp32 identical predictions and max|Δlogit| ≤ "
            f"{g['fp32_max_abs_logit_diff']:g}; int8 accuracy difference ≤ {g['int8_max_drop_points']:g} points and "
            f"agreement ≥ {g['int8_min_agreement_pct']:g}%; timing shown as ratios, never gated")


def format_table(result: dict) -> str:
    from toolkit.width import fit

    pair = len(result["runs"]) == 2  # two runs: one row of figures each; more: a matrix of short cells, as text
    lines = _grid(_pair_lines(result), left=2) if pair else _grid(_matrix_lines(result), left=len(result["runs"]))
    return fit("\n".join(lines + [""] + _notes(result) + ["", _gates_line(result),
                                                          f"{result['n_test']:,} test images", verdict(result)]))


def format_markdown(result: dict) -> str:
    from toolkit.report import _md_cell

    lines = _pair_lines(result) if len(result["runs"]) == 2 else _matrix_lines(result)
    md = ["| " + " | ".join(_md_cell(c) for c in lines[0]) + " |", "|" + "|".join("---" for _ in lines[0]) + "|"]
    md += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in lines[1:]]
    md += [""] + [f"- {_md_cell(n)}" for n in _notes(result)] + ["", _gates_line(result), "",
                                                                   f"**{_md_cell(verdict(result))}**"]
    return "\n".join(md) + "\n"
