"""Export publishes all-or-nothing: failing (or killing the process at) the Nth rename leaves the
previous export byte-identical and verifiable."""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import LOOSE, run

import toolkit.publish as publish


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def export_args(exported, tiny_export):
    # another calibration: the int8 files, the reference's neighbours and the manifest all change
    return ["export", "--checkpoint", exported / "cnn.pt", "--out", exported, "--quantize",
            "--calibration-size", "50", "--seed", "3", "--data-dir", tiny_export["data"]]


N_RENAMES = 6  # 4 models, reference.npz, manifest.json


@pytest.mark.parametrize("n", range(1, N_RENAMES + 1))
def test_failing_the_nth_rename_restores_everything(exported, tiny_export, monkeypatch, n):
    before = snapshot(exported)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == n:
            raise OSError(30, "Read-only file system", str(dst))
        return real(src, dst)

    monkeypatch.setattr(publish, "_rename", flaky)
    r = run(*export_args(exported, tiny_export))
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1, r.output
    assert "previous artifacts left as they were" in r.stderr
    assert snapshot(exported) == before
    assert not [p for p in exported.iterdir() if p.name.startswith(".export-")]
    monkeypatch.setattr(publish, "_rename", real)
    assert run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE).exit_code == 0


def test_a_file_that_cannot_be_replaced_stops_before_anything_changes(exported, tiny_export, monkeypatch):
    """Like an immutable manifest.json: the link that keeps the old copy fails first."""
    before = snapshot(exported)
    real = os.link

    def no_link(src, dst, **kw):
        if str(src).endswith("manifest.json"):
            raise PermissionError(1, "Operation not permitted", str(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(publish.os, "link", no_link)
    r = run(*export_args(exported, tiny_export))
    assert r.exit_code == 1 and "manifest.json" in r.stderr and "previous artifacts left as they were" in r.stderr
    assert snapshot(exported) == before


KILL = textwrap.dedent("""
    import os, sys
    import toolkit.publish as publish
    real, calls = os.replace, []
    def dying(src, dst):
        calls.append(dst)
        if len(calls) == {n}:
            os._exit(137)  # as SIGKILL: no cleanup runs
        return real(src, dst)
    publish._rename = dying
    from toolkit.cli import main
    main({args!r}, prog_name="mnisttk")
""")


@pytest.mark.parametrize("n", [1, 3, N_RENAMES])
def test_killed_at_the_nth_rename_is_rolled_back_by_the_next_export(exported, tiny_export, n):
    before = snapshot(exported)
    args = [str(a) for a in export_args(exported, tiny_export)]
    proc = subprocess.run([sys.executable, "-c", KILL.format(n=n, args=args)], capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr
    stages = [p for p in exported.iterdir() if p.name.startswith(".export-")]
    assert stages  # the dead export's stage
    after_kill = snapshot(exported)
    # verify is read-only: it never recovers, locks or cleans up, even for an export of ours
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE)
    assert "killed while publishing" not in r.stderr and all(s.is_dir() for s in stages)
    assert snapshot(exported) == after_kill
    done = publish.recover(exported)  # what the next export does first, holding the folder's lock
    assert any("killed while publishing" in d and "previous artifacts restored" in d for d in done), done
    assert snapshot(exported) == before
    assert not [p for p in exported.iterdir() if p.name.startswith(".export-")]


def test_stale_staging_folders_are_removed_once_and_live_ones_kept(exported, tiny_export):
    stale = publish.Stage(exported)
    stale._lock.close()  # as if its process had died
    live = publish.Stage(exported)
    try:
        done = publish.recover(exported)
        assert len(done) == 1 and "removed stale staging folder" in done[0]
        assert not stale.dir.exists() and live.dir.exists()
    finally:
        live.close()
