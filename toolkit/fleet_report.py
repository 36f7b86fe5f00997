"""One report for a fleet (`verify --cluster`, toolkit.cluster): each node's verify result, grouped by
node kind, a verdict per kind and one overall, and the nodes' per-image outputs compared with
`mnisttk compare`'s code. numpy only."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from toolkit.config import Gates

SCHEMA_VERSION = 1


def merge(nodes: list[dict], outcomes: dict, labels: np.ndarray, gates: Gates, seconds: float, address: str) -> dict:
    """The fleet's JSON: `nodes` (each with its kind, machine record, status, its verify result), `kinds`
    (the verdict per kind), `comparison` (toolkit.compare over the nodes that ran), `passed`."""
    from toolkit.cluster import kind_of

    out_nodes: list = []
    kinds: dict = {}
    for n in nodes:
        o = outcomes.get(n["id"], {"status": "lost", "reason": "no result came back"})
        kind = kind_of(n["record"])
        entry = {"id": n["id"], "address": n.get("address"), "kind": kind, "status": o["status"],
                 "record": n["record"], "ran_on": o.get("ran_on", n["id"])}
        if o["status"] == "ok":
            result = o["result"]
            entry["result"] = result
            entry["passed"] = bool(result["passed"])
            changed = _changed(n["record"], o.get("record_after") or {}, o.get("clock_moved_s") or 0.0)
            if changed:
                entry["changed_during_run"] = changed
        else:
            entry["passed"] = False
            entry["reason"] = o.get("reason")
        out_nodes.append(entry)
        k = kinds.setdefault(kind, {"kind": kind, "nodes": [], "passed": True, "failed": []})
        k["nodes"].append(n["id"])
        if not entry["passed"]:
            k["passed"] = False
            k["failed"] += ([f"{r} (node {n['id'][:8]})" for r in entry["result"]["failed_rows"]]
                            if "result" in entry else [f"every row {entry['status']} (node {n['id'][:8]}): "
                                                       f"{entry.get('reason')}"])
    comparison = _compare([(n, outcomes[n["id"]]) for n in nodes if outcomes.get(n["id"], {}).get("status") == "ok"],
                          gates)
    passed = all(k["passed"] for k in kinds.values()) and (comparison is None or comparison["passed"])
    return {"schema_version": SCHEMA_VERSION, "kind": "mnisttk-fleet", "cluster": address, "passed": passed,
            "seconds": round(seconds, 1), "gates": asdict(gates), "n_test": int(len(labels)),
            "kinds": list(kinds.values()), "nodes": out_nodes, "comparison": comparison}


CLOCK_TOLERANCE_S = 5.0  # a node's clock against the driver's may drift by this between the probe and the result
# (the two readings are taken on either side of a network hop and a task hand-off)


def _changed(before: dict, after: dict, clock_moved_s: float = 0.0) -> list[str]:
    """What of a node's machine record changed between the probe and the run: CPU, versions, its clock
    against the driver's (set, or jumping, mid-run: its timings are not to be trusted)."""
    changed = []
    if abs(clock_moved_s) > CLOCK_TOLERANCE_S:
        changed.append(f"clock (moved {clock_moved_s:+.1f} s against the driver's)")
    if after and (before.get("cpu") or {}).get("model") != (after.get("cpu") or {}).get("model"):
        changed.append("CPU model")
    if after and (before.get("cpu") or {}).get("flags") != (after.get("cpu") or {}).get("flags"):
        changed.append("CPU flags")
    if after and before.get("versions") != after.get("versions"):
        changed.append("runtime versions")
    return changed


def _compare(ran: list[tuple[dict, dict]], gates: Gates) -> dict | None:
    """The nodes' outputs against the first node's, by toolkit.compare (None with fewer than two)."""
    if len(ran) < 2:
        return None
    from toolkit import outputs as saved_outputs
    from toolkit.compare import compare_runs

    with tempfile.TemporaryDirectory(prefix="mnisttk-fleet-") as tmp:
        runs = []
        for n, o in ran:
            path = Path(tmp) / f"node-{n['id'][:8]}.json"
            path.write_bytes(o["outputs"])
            runs.append(saved_outputs.load(path))
        # a row one node skips (its runtime is not installed there) is excused and listed, as locally;
        # a row that failed on a node still fails the comparison
        return compare_runs(runs, gates, allow_missing=("*",))


def verdict(fleet: dict) -> str:
    kinds = fleet["kinds"]
    bad = [k for k in kinds if not k["passed"]]
    lost = [n for n in fleet["nodes"] if n["status"] != "ok"]
    if not bad and fleet["passed"]:
        return f"PASS on every node kind ({len(kinds)} kind(s), {len(fleet['nodes'])} node(s))"
    parts = [f"{len(bad)} of {len(kinds)} node kind(s) FAIL"] if bad else []
    if lost:
        parts.append(f"{len(lost)} node(s) {'/'.join(sorted({n['status'] for n in lost}))}")
    if fleet.get("comparison") and not fleet["comparison"]["passed"]:
        parts.append("the nodes' outputs differ beyond the gates")
    return "FAIL: " + "; ".join(parts)


def format_fleet(fleet: dict, wide: bool = False) -> str:
    """Text: per node kind its nodes and each node's verify table, then the cross-node comparison and the
    fleet's verdict."""
    from toolkit.compare import format_table as compare_table
    from toolkit.report import format_table

    lines = [f"fleet: {fleet['cluster']}, {len(fleet['nodes'])} node(s) in {len(fleet['kinds'])} kind(s), "
             f"{fleet['n_test']:,} test images, {fleet['seconds']:.1f} s"]
    for k in fleet["kinds"]:
        lines += ["", f"== {k['kind']}: {'PASS' if k['passed'] else 'FAIL'} ({len(k['nodes'])} node(s))"]
        for n in (n for n in fleet["nodes"] if n["kind"] == k["kind"]):
            head = f"-- node {n['id'][:12]} at {n.get('address')}"
            if n["ran_on"] != n["id"]:
                head += f" (run on {n['ran_on'][:12]} after it was lost)"
            lines.append(head)
            if n["status"] != "ok":
                lines.append(f"   {n['status'].upper()}: {n.get('reason')}")
                continue
            if n.get("changed_during_run"):
                lines.append(f"   changed during the run: {', '.join(n['changed_during_run'])}")
            lines.append(format_table(n["result"], wide=wide))
    if fleet.get("comparison"):
        lines += ["", "== the nodes' outputs, image by image, against the first node's", compare_table(fleet["comparison"])]
    lines += ["", verdict(fleet)]
    return "\n".join(lines)


def format_markdown(fleet: dict) -> str:
    from toolkit.compare import format_markdown as compare_markdown
    from toolkit.report import format_markdown as verify_markdown

    out = [f"# mnisttk verify on a fleet: {verdict(fleet)}", ""]
    for k in fleet["kinds"]:
        out += [f"## {k['kind']}: {'PASS' if k['passed'] else 'FAIL'}", ""]
        for n in (n for n in fleet["nodes"] if n["kind"] == k["kind"]):
            out += [f"### node {n['id'][:12]} ({n.get('address')})", ""]
            out += [verify_markdown(n["result"])] if n["status"] == "ok" else [f"{n['status'].upper()}: {n.get('reason')}", ""]
    if fleet.get("comparison"):
        out += ["## The nodes' outputs, image by image", "", compare_markdown(fleet["comparison"])]
    return "\n".join(out) + "\n"
