"""`verify --cluster`: the same proof on every machine kind of a Ray cluster at once.

Each selected node runs the whole local verify (toolkit.verify.run_verify: every row in its own bounded
child, exactly as on a laptop) on the export folder's bytes and the test set, which travel through Ray's
object store and are re-hashed on the node before anything is loaded. The driver groups the nodes by
kind (CPU architecture, model and the flags that change arithmetic), gives a verdict per kind and one
overall, and compares the nodes' per-image outputs with `mnisttk compare`'s own code (toolkit.compare).

Faults are visible: a node lost mid-run is retried once on another node of the same kind, else its rows
are `lost (node …)` and the verdict cannot be PASS; Ctrl-C cancels every task. A node whose machine record
(CPU, runtime versions) differs between the probe before the run and the run itself is named.

Ray is imported here only, and only when `--cluster` is given: without it nothing changes. A Ray cluster
runs whatever its clients send: it is trusted infrastructure (docs/security.md); `--cluster local` starts a
private one on a loopback address. numpy only at import time."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError, first_line

LOCAL = "local"
LOCAL_NODE_IP = "127.0.0.2"  # Ray keeps this loopback address (it swaps 127.0.0.1 for the interface's)
MAX_SEND_BYTES = 2 * 2**30  # the export folder sent to each node: ours are ~10 MB
INSTALL_HINT = "pip install 'mnisttk[cluster]'"


class ClusterError(ToolkitError):
    """The cluster cannot be reached, or has no node that matches."""


# ---------------------------------------------------------------- what runs on a node


def node_record() -> dict:
    """This node's machine record: CPU (model, flags), architecture, platform, and the runtimes' versions."""
    from toolkit.env import library_versions
    from toolkit.machine import machine_info

    return {**machine_info(None), "arch": platform.machine(), "versions": library_versions(), "pid": os.getpid(),
            "clock": time.time()}


def verify_on_node(files: dict, images: np.ndarray, labels: np.ndarray, test_sha256: str, config: Any) -> dict:
    """The task a node runs: the export folder written into a private temporary folder (each file's
    SHA-256 checked against the manifest first), the test set re-hashed, then the local verify. Returns
    its JSON result, the per-image outputs document and this node's machine record."""
    import json

    from toolkit import outputs as saved_outputs
    from toolkit.data import split_sha256
    from toolkit.fsutil import sha256_bytes
    from toolkit.manifest import MANIFEST_NAME, validate_manifest
    from toolkit.verify import run_verify

    record = node_record()
    if split_sha256(images, labels) != test_sha256:
        raise ToolkitError("the test set arrived changed (SHA-256 differs); nothing was run")
    with tempfile.TemporaryDirectory(prefix="mnisttk-node-") as tmp:
        folder = Path(tmp)
        manifest = validate_manifest(json.loads(files[MANIFEST_NAME]), folder)
        listed = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
        listed.update({f["file"]: f["sha256"] for f in manifest.get("support_files", [])})
        listed[manifest["reference"]["file"]] = manifest["reference"]["sha256"]
        for name, data in files.items():
            if name in listed and sha256_bytes(data) != listed[name]:
                raise ToolkitError(f"{name}: arrived with another SHA-256 than the manifest's; nothing was run")
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        logits: dict = {}
        result = run_verify(replace(config, folder=folder), images, labels, test_sha256, outputs=logits)
        shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
        shas[manifest["reference"]["file"]] = manifest["reference"]["sha256"]
        doc = saved_outputs.build(result, logits, labels, test_sha256, shas)
    return {"result": result, "outputs": saved_outputs.dumps(doc), "record": record, "record_after": node_record()}


# ---------------------------------------------------------------- the driver


def kind_of(record: dict) -> str:
    """A node kind in words: architecture, CPU model and the flags that change arithmetic."""
    cpu = record.get("cpu") or {}
    flags = ", ".join(cpu.get("flags") or []) or "no listed flags"
    return f"{record.get('arch', '?')} {cpu.get('model', '?')} ({flags})"


def select(nodes: list[dict], selector: str | None) -> list[dict]:
    """The nodes `--nodes` names: all (default), or a comma list of arch=…, flag=…, label:KEY=VALUE,
    node=ID-PREFIX terms, every term to hold."""
    if not selector or selector == "all":
        return nodes
    chosen = nodes
    for term in selector.split(","):
        term = term.strip()
        key, _, value = term.partition("=")
        if key == "arch":
            chosen = [n for n in chosen if n["record"].get("arch") == value]
        elif key == "flag":
            chosen = [n for n in chosen if (n["record"].get("cpu") or {}).get(value)]
        elif key.startswith("label:"):
            chosen = [n for n in chosen if (n.get("labels") or {}).get(key[6:]) == value]
        elif key == "node":
            chosen = [n for n in chosen if n["id"].startswith(value)]
        else:
            raise ClusterError(f"--nodes {term[:40]!r}: expected arch=…, flag=…, label:KEY=VALUE or node=ID")
    if not chosen:
        raise ClusterError(f"--nodes {selector[:60]!r} matches none of the cluster's {len(nodes)} node(s) "
                           f"({'; '.join(sorted({kind_of(n['record']) for n in nodes}))})")
    return chosen


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connected(address: str, log: Callable[[str], None]):
    """Ray, connected to `address` (`local`: a private single-node cluster on a loopback address, shut
    down after; `auto`: RAY_ADDRESS or the machine's running cluster; else HOST:PORT)."""
    ray = _ray()
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == LOCAL:
            ray.init(_node_ip_address=LOCAL_NODE_IP, num_cpus=os.cpu_count() or 1, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray's connection errors are of many types: one line
        raise ClusterError(f"--cluster {address[:60]}: cannot connect ({first_line(exc, 160)})") from None
    log(f"cluster: connected to {address} (Ray {ray.__version__})")
    try:
        yield ray
    finally:
        ray.shutdown()


def _strategy(ray, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def probe_nodes(ray, timeout_s: float = 120.0) -> list[dict]:
    """Every alive node, with its machine record from a task pinned on it. A node that dies before it
    answers is kept, `lost`, with its reason (the report names it); a node whose task fails (no mnisttk
    there) is an error."""
    from ray.exceptions import RayError, RayTaskError

    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not alive:
        raise ClusterError("the cluster has no alive node with a CPU")
    remote = ray.remote(num_cpus=1, max_retries=0)(node_record)
    refs = [remote.options(scheduling_strategy=_strategy(ray, n["NodeID"])).remote() for n in alive]
    found = []
    for n, ref in zip(alive, refs, strict=True):
        entry = {"id": n["NodeID"], "address": n.get("NodeManagerAddress"), "labels": n.get("Labels") or {}}
        try:
            entry["record"] = ray.get(ref, timeout=timeout_s)
            entry["clock_offset_s"] = entry["record"]["clock"] - time.time()  # the node's clock against ours
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise ClusterError(f"node {n['NodeID'][:12]} ({entry['address']}) could not describe itself "
                               f"({type(cause).__name__}: {first_line(cause, 120)}); every node needs this "
                               "mnisttk installed") from None
        except (RayError, TimeoutError) as exc:  # died, or never answered: named in the report as lost
            entry["record"] = {"arch": "?", "cpu": {"model": f"unknown (node lost before it answered: "
                                                            f"{type(exc).__name__})", "flags": []}}
            entry["lost"] = f"node {n['NodeID'][:12]} ({entry['address']}) lost before the run ({type(exc).__name__})"
        found.append(entry)
    return found


def run_fleet(config: Any, address: str, selector: str | None, images: np.ndarray, labels: np.ndarray,
              test_sha256: str, log: Callable[[str], None] = lambda s: None) -> dict:
    """verify on every selected node of the cluster: the fleet result (toolkit.fleet_report)."""
    from toolkit.fleet_report import merge

    files = export_bytes(config.folder)
    with connected(address, log) as ray:
        nodes = select(probe_nodes(ray), selector)
        log(f"cluster: {len(nodes)} node(s), {len({kind_of(n['record']) for n in nodes})} kind(s)")
        task = ray.remote(num_cpus=1, max_retries=0)(verify_on_node)
        blobs = (ray.put(files), ray.put(np.ascontiguousarray(images)), ray.put(np.ascontiguousarray(labels)))
        t0 = time.perf_counter()
        outcomes = _dispatch(ray, task, nodes, blobs, test_sha256, config, log)
        seconds = time.perf_counter() - t0
    return merge(nodes, outcomes, labels, config.gates, seconds, address)


def _dispatch(ray, task, nodes: list[dict], blobs: tuple, test_sha256: str, config, log) -> dict:
    """Each node's run; a node lost mid-run is retried once on another alive node of its kind."""
    from ray.exceptions import RayError, RayTaskError

    def submit(node):
        return task.options(scheduling_strategy=_strategy(ray, node["id"])).remote(*blobs, test_sha256, config)

    outcomes: dict = {n["id"]: {"status": "lost", "ran_on": n["id"], "reason": n["lost"]} for n in nodes if "lost" in n}
    # ref -> (node it stands for, node it runs on, retries)
    pending = {submit(n): (n, n, 0) for n in nodes if "lost" not in n}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            node, ran_on, tries = pending.pop(ref)
            try:
                out = ray.get(ref)
                offset = out["record_after"]["clock"] - time.time()
                outcomes[node["id"]] = {"status": "ok", "ran_on": ran_on["id"], **out,
                                        "clock_moved_s": offset - ran_on.get("clock_offset_s", offset)}
                log(f"cluster: {kind_of(ran_on['record'])} [{ran_on['id'][:8]}]: "
                    f"{'PASS' if out['result']['passed'] else 'FAIL'}")
            except RayTaskError as exc:  # the task itself raised (a refusal on the node): its own line
                cause = getattr(exc, "cause", None) or exc
                outcomes[node["id"]] = {"status": "error", "ran_on": ran_on["id"], "reason": first_line(cause, 300)}
            except RayError as exc:  # the node or its worker died: once more on another node of its kind
                others = [n for n in _alive_same_kind(ray, nodes, ran_on) if n["id"] != ran_on["id"]]
                if tries == 0 and others:
                    log(f"cluster: node {ran_on['id'][:8]} lost ({type(exc).__name__}); retrying on {others[0]['id'][:8]}")
                    pending[submit(others[0])] = (node, others[0], 1)
                else:
                    outcomes[node["id"]] = {"status": "lost", "ran_on": ran_on["id"],
                                            "reason": f"node {ran_on['id'][:12]} ({ran_on.get('address')}) lost "
                                                      f"mid-run ({type(exc).__name__}); its rows were not measured"}
    except KeyboardInterrupt:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True, recursive=True)
        raise ToolkitError("interrupted: every task on the cluster was cancelled; nothing was reported") from None
    return outcomes


def _alive_same_kind(ray, nodes: list[dict], lost: dict) -> list[dict]:
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    return [n for n in nodes if n["id"] in alive and kind_of(n["record"]) == kind_of(lost["record"])]


def export_bytes(folder: Path) -> dict:
    """Every file the manifest lists (artifacts, support files, reference, manifest), by its name in the
    folder, read once here (each is hashed again on the node before it is used)."""
    from toolkit.manifest import MANIFEST_NAME, confined_path, load_manifest

    manifest = load_manifest(folder)
    names = [a["file"] for a in manifest["artifacts"]] + [f["file"] for f in manifest.get("support_files", [])]
    names += [manifest["reference"]["file"], MANIFEST_NAME]
    if isinstance(manifest["checkpoint"].get("file"), str):  # the live PyTorch reference row's weights
        names.append(manifest["checkpoint"]["file"])
    files, total = {}, 0
    for name in dict.fromkeys(names):
        path = confined_path(folder, name, subpath=True)
        if not path.is_file():
            continue  # a missing artifact: the node's verify says so, as locally
        data = path.read_bytes()
        total += len(data)
        if total > MAX_SEND_BYTES:
            raise ClusterError(f"{folder}: more than {MAX_SEND_BYTES // 2**30} GiB to send to each node; refused")
        files[name] = data
    return files


# ---------------------------------------------------------------- export --search --cluster


def evaluate_on_node(files: dict, names: list, images: np.ndarray, labels: np.ndarray, ref_logits: np.ndarray,
                     gates: Any) -> tuple[list, dict]:
    """The task: the fp32 file and the candidates written into a private folder, then toolkit.search's
    own scoring and interleaved timing, here on this node."""
    from toolkit.search import evaluate_candidates

    with tempfile.TemporaryDirectory(prefix="mnisttk-search-node-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        scores, timing = evaluate_candidates(Path(tmp) / "fp32.onnx", [Path(tmp) / n for n in names], images, labels,
                                  ref_logits, gates)
    return scores, {**timing, "node_record": node_record()}


def search_evaluator(address: str, selector: str | None, log: Callable[[str], None]) -> Callable:
    """An evaluator for toolkit.search.run_search that scores and times every candidate on one node of the
    kind `--nodes` selects (it must select one kind: timings of different CPUs are not comparable)."""

    def evaluator(fp32_onnx: Path, paths: list, images: np.ndarray, labels: np.ndarray, ref_logits: np.ndarray,
                  gates: Any) -> tuple[list, dict]:
        with connected(address, log) as ray:
            nodes = [n for n in select(probe_nodes(ray), selector) if "lost" not in n]
            kinds = sorted({kind_of(n["record"]) for n in nodes})
            if len(kinds) != 1:
                raise ClusterError(f"--search --cluster times the candidates on one node kind, and --nodes "
                                   f"{selector or 'all'} selects {len(kinds)}: {'; '.join(kinds)[:200]}")
            node = nodes[0]
            files = {"fp32.onnx": fp32_onnx.read_bytes(), **{p.name: p.read_bytes() for p in paths}}
            task = ray.remote(num_cpus=1, max_retries=0)(evaluate_on_node)
            ref = task.options(scheduling_strategy=_strategy(ray, node["id"])).remote(
                files, [p.name for p in paths], images, labels, ref_logits, gates)
            try:
                scores, timing = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a lost node or a failed task: one line, nothing written
                cause = getattr(exc, "cause", None) or exc
                raise ClusterError(f"--search on node {node['id'][:12]} failed ({type(cause).__name__}: "
                                   f"{first_line(cause, 160)}); nothing was written") from None
            log(f"search: candidates scored and timed on {kind_of(node['record'])} [{node['id'][:8]}]")
            record = timing.pop("node_record")
            timing["node"] = {"id": node["id"], "address": node.get("address"), "kind": kind_of(record),
                              "record": record}
            return scores, timing

    return evaluator
