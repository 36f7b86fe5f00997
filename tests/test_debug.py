"""MNISTTK_DEBUG=1 shows the chained traceback behind an `Error:` line; without it, the one line only."""

from click.testing import CliRunner

from toolkit.cli import main


def _run(tmp_path, debug: bool):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    env = {"MNISTTK_DEBUG": "1" if debug else "0"}
    return CliRunner().invoke(main, ["export", "--checkpoint", str(bad), "--dir", str(tmp_path / "out")], env=env)


def test_debug_prints_the_chain_behind_the_error_line(tmp_path):
    r = _run(tmp_path, debug=True)
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.output
    # the unpickler's own error, which the one line hides (`from None`), is in the chain
    assert "During handling of the above exception" in r.output
    assert r.output.rstrip().splitlines()[-1].startswith("Error: ") and "not an mnisttk checkpoint" in r.output


def test_without_debug_the_error_is_one_line(tmp_path):
    r = _run(tmp_path, debug=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [x for x in r.output.splitlines() if x.strip()] == [x for x in r.output.splitlines() if x.startswith("Error:")]
