"""verify --cluster (issue 48): the proof on every node of a Ray cluster. A private single-node cluster
gives the local verdicts; two Ray nodes on this machine (loopback addresses), one made to look like an
AVX2-only CPU without torch (an edge device) through the suite's doubles (MNISTTK_CPUINFO, ONEDNN_MAX_CPU_ISA,
a module hidden by sitecustomize), give a report per node kind and the nodes compared image by image; a node
killed mid-run is lost and the fleet FAILs."""

import contextlib
import importlib.util
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LOOSE, run

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (mnisttk[cluster])", allow_module_level=True)

CPUINFO_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12 (a test double)\nflags\t\t: fpu sse sse2 avx avx2 fma\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


class Fleet:
    """Three Ray nodes on loopback addresses, stopped by their temp dir: the head (127.0.0.2) and 127.0.0.3 are
    the double — an AVX2-only EPYC without torch, an edge device — and 127.0.0.4 is this machine as it is.
    Each worker's temporary files are its own, so a test sees when its verify has begun."""

    def __init__(self, tmp: Path):
        self.temp = Path(f"/tmp/rt{secrets.token_hex(3)}")  # Ray's socket paths must stay short
        token = tmp / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.port = _free_port()
        self.address = f"127.0.0.2:{self.port}"
        hidden = tmp / "no_torch"
        hidden.mkdir()
        (hidden / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # not installed here\n")
        cpuinfo = tmp / "cpuinfo"
        cpuinfo.write_text(CPUINFO_AVX2)
        double = {"MNISTTK_CPUINFO": str(cpuinfo), "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(hidden)}
        # short: a forkserver's socket lives in TMPDIR, and AF_UNIX paths are at most 107 bytes
        self.tmp = {ip: Path(f"{self.temp}n{ip[-1]}") for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
        for folder in self.tmp.values():
            folder.mkdir()
        common = ["--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(self.temp)]
        self._start(["--head", "--node-ip-address", "127.0.0.2", "--port", str(self.port), "--include-dashboard",
                     "false"], {**double, "TMPDIR": str(self.tmp["127.0.0.2"])}, common)
        self._start(["--address", self.address, "--node-ip-address", "127.0.0.3"],
                    {**double, "TMPDIR": str(self.tmp["127.0.0.3"])}, common)
        self._start(["--address", self.address, "--node-ip-address", "127.0.0.4"],
                    {"TMPDIR": str(self.tmp["127.0.0.4"])}, common)

    def _start(self, args: list, env: dict, common: list) -> None:
        subprocess.run([_ray_bin(), "start", *args, *common], env={**self.env, **env}, check=True, capture_output=True)

    def begun(self, ip: str) -> bool:
        """Whether the node's verify has written its private folder of the export."""
        return bool(list(self.tmp[ip].glob("mnisttk-node-*")))

    def pids(self, needle: str = "") -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"{self.temp}.*{needle}" if needle else str(self.temp)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_node(self, ip: str) -> None:
        for pid in self.pids(ip):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def family(self) -> list[int]:
        """The nodes' processes (by their temp dir or the head's address) and every descendant of them: Ray's
        agents rename themselves (ray::DashboardAgent) and would outlive a killed raylet."""
        parents = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        found = set(self.pids()) | {int(p) for p in subprocess.run(["pgrep", "-f", self.address], capture_output=True,
                                                                   text=True).stdout.split()}
        grew = True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        return sorted(found - {os.getpid()})

    def stop(self) -> None:
        for pid in self.family():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(self.temp), *map(str, self.tmp.values())], check=False)


@pytest.fixture
def fleet(tmp_path):
    nodes = Fleet(tmp_path)
    try:
        yield nodes
    finally:
        nodes.stop()


def test_a_private_cluster_gives_the_local_verdicts(exported, tiny_export, tmp_path):
    data = tiny_export["data"]
    local = run("verify", "--dir", exported, "--data-dir", data, *LOOSE, "--json", tmp_path / "local.json")
    r = run("verify", "--dir", exported, "--data-dir", data, *LOOSE, "--cluster", "local", "--json", tmp_path / "f.json")
    assert r.exit_code == local.exit_code == 0, r.output
    fleet, mine = json.loads((tmp_path / "f.json").read_text()), json.loads((tmp_path / "local.json").read_text())
    assert fleet["passed"] and len(fleet["nodes"]) == 1 and len(fleet["kinds"]) == 1
    node = fleet["nodes"][0]
    assert node["address"] == "127.0.0.2"  # a private cluster on a loopback address
    assert {r["id"]: r["status"] for r in node["result"]["rows"]} == {r["id"]: r["status"] for r in mine["rows"]}
    assert node["record"]["cpu"]["model"] == mine["machine"]["cpu"]["model"]
    assert "PASS on every node kind (1 kind(s), 1 node(s))" in r.output


def _fleet_verify(fleet: Fleet, folder: Path, data: Path, tmp: Path, name: str, *extra) -> subprocess.Popen:
    # the driver in a process of its own: Ray reads its token settings when it is first imported
    return subprocess.Popen([sys.executable, "-m", "toolkit", "verify", "--dir", str(folder), "--data-dir", str(data),
                             *LOOSE, "--cluster", fleet.address, "--json", str(tmp / f"{name}.json"), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=fleet.env)


def test_two_node_kinds_a_report_each_then_nodes_lost(exported, tiny_export, tmp_path, fleet):
    data = tiny_export["data"]
    proc = _fleet_verify(fleet, exported, data, tmp_path, "f", "--markdown", tmp_path / "f.md", "--html",
                         tmp_path / "f.html")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    result = json.loads((tmp_path / "f.json").read_text())
    _valid(result)
    assert len(result["nodes"]) == 3 and len(result["kinds"]) == 2 and result["passed"]
    kinds = {k["kind"]: k for k in result["kinds"]}
    double = next(n for n in result["nodes"] if "a test double" in n["kind"])
    other = next(n for n in result["nodes"] if "a test double" not in n["kind"])
    assert len(kinds[double["kind"]]["nodes"]) == 2 and len(kinds[other["kind"]]["nodes"]) == 1
    rows = {x["id"]: x for x in double["result"]["rows"]}
    # the node without torch lists its TorchScript rows as skipped with the reason, as locally; the other ran them
    ts = next(rid for rid in rows if rid.startswith("torchscript-int8"))
    assert rows[ts]["status"] == "skipped" and "torch" in " ".join(rows[ts]["reasons"]), rows[ts]
    assert {x["id"]: x["status"] for x in other["result"]["rows"]}[ts] == "ok"
    # each node's int8 rows name the arithmetic of its CPU kind (the double is an x86 CPU: on an x86 machine)
    onnx_int8 = next(x for x in double["result"]["rows"] if x["id"] == "onnx-int8@ort-cpu")
    assert platform.machine() not in ("x86_64", "AMD64") or "AVX2" in onnx_int8["int8_arithmetic"]
    assert result["comparison"]["passed"] and result["comparison"]["cells_compared"] > 0
    assert any("torchscript" in e for e in result["comparison"]["excused"])
    assert "# mnisttk verify on a fleet: PASS" in (tmp_path / "f.md").read_text()
    page = (tmp_path / "f.html").read_text()
    assert "mnisttk verify on a fleet: " in page and page.count('<section class="node">') == 3
    # two nodes killed mid-run: the double's is run again on the other node of its kind (the head); the only
    # node of its kind is lost, and the fleet cannot PASS
    proc = _fleet_verify(fleet, exported, data, tmp_path, "lost")
    deadline = time.time() + 120  # killed once both have begun their verify
    while time.time() < deadline and not (fleet.begun("127.0.0.3") and fleet.begun("127.0.0.4")):
        time.sleep(0.1)
    fleet.kill_node("127.0.0.3")
    fleet.kill_node("127.0.0.4")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert (tmp_path / "lost.json").exists(), out[-3000:]
    lost = json.loads((tmp_path / "lost.json").read_text())
    _valid(lost)
    by_ip = {n["address"]: n for n in lost["nodes"]}
    assert by_ip["127.0.0.4"]["status"] == "lost" and by_ip["127.0.0.3"]["status"] == "ok", out[-2000:]
    assert by_ip["127.0.0.3"]["ran_on"] != by_ip["127.0.0.3"]["id"]  # retried on the head, its kind
    assert not lost["passed"] and "1 node(s) lost" in out and "after it was lost" in out


def _valid(fleet: dict) -> None:
    """The fleet document against its schema, each node's result against verify's, the comparison against compare's."""
    from test_json_schemas import check

    check("fleet", fleet)
    for n in fleet["nodes"]:
        if "result" in n:
            check("verify", n["result"])
    if fleet["comparison"]:
        check("compare", fleet["comparison"])


def test_the_node_selector_and_its_refusals():
    from toolkit.cluster import ClusterError, select

    def node(i, arch, flags, labels=None):
        return {"id": f"{i:02d}" * 20, "labels": labels or {},
                "record": {"arch": arch, "cpu": {"model": "m", "flags": flags, **dict.fromkeys(flags, True)}}}

    nodes = [node(1, "x86_64", ["avx2"]), node(2, "x86_64", ["avx2", "avx512_vnni"], {"rack": "b"}),
             node(3, "aarch64", ["asimddp"])]
    assert select(nodes, None) == nodes
    assert [n["id"][:2] for n in select(nodes, "arch=x86_64")] == ["01", "02"]
    assert [n["id"][:2] for n in select(nodes, "arch=x86_64,flag=avx512_vnni")] == ["02"]
    assert [n["id"][:2] for n in select(nodes, "label:rack=b")] == ["02"]
    assert [n["id"][:2] for n in select(nodes, "node=0303")] == ["03"]
    with pytest.raises(ClusterError, match="matches none of the cluster's 3 node"):
        select(nodes, "flag=amx_int8")
    with pytest.raises(ClusterError, match="expected arch="):
        select(nodes, "cpu=fast")


def test_without_cluster_nothing_imports_ray(exported, tiny_export):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom toolkit.cli import main\n"
            f"r = CliRunner().invoke(main, ['verify', '--dir', {str(exported)!r}, '--data-dir', "
            f"{str(tiny_export['data'])!r}, *{LOOSE!r}])\n"
            "assert r.exit_code == 0, r.output\nassert 'ray' not in sys.modules, 'ray imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ)
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--nodes", "arch=x86_64")
    assert r.exit_code == 2 and "--nodes selects nodes of a --cluster" in r.output


def test_export_search_times_its_candidates_on_a_cluster_node(tiny_export, tmp_path):
    out = tmp_path / "searched"
    out.mkdir()
    import shutil

    shutil.copy(tiny_export["out"] / "cnn.pt", out / "cnn.pt")
    r = run("export", "--checkpoint", out / "cnn.pt", "--dir", out, "--quantize", "--search", "--targets", "onnx",
            "--calibration-size", "50", "--data-dir", tiny_export["data"], "--cluster", "local",
            "--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-max-clipped", "100")
    assert r.exit_code == 0, r.output
    search = json.loads((out / "manifest.json").read_text())["search"]
    node = search["timing"]["node"]
    assert node["address"] == "127.0.0.2" and node["record"]["cpu"]["model"]
    assert sum(row.get("chosen", False) for row in search["table"]) == 1
    r = run("export", "--checkpoint", out / "cnn.pt", "--dir", out, "--quantize", "--cluster", "local")
    assert r.exit_code == 2 and "--cluster and --nodes go with --search" in r.output


def test_a_node_whose_machine_changes_during_the_run_is_named():
    from toolkit.fleet_report import CLOCK_TOLERANCE_S, _changed

    rec = {"cpu": {"model": "m", "flags": ["avx2"]}, "versions": {"onnxruntime": "1.32.0"}}
    assert _changed(rec, dict(rec), CLOCK_TOLERANCE_S) == []
    assert _changed(rec, dict(rec), CLOCK_TOLERANCE_S + 0.1)[0].startswith("clock (moved +5.1 s")
    assert _changed(rec, {**rec, "cpu": {"model": "n", "flags": ["avx2"]}}) == ["CPU model"]
    assert _changed(rec, {**rec, "versions": {"onnxruntime": "1.33.0"}}) == ["runtime versions"]
