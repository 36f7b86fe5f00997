"""What users install is what is tested: `make test` builds the wheel, installs it (not an editable
checkout) and runs these tests against it."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = os.environ.get("MNISTTK_WHEEL_DIR")
needs_make = pytest.mark.skipif(not WHEEL_DIR, reason="run through `make test` (it builds and installs the wheel)")


def source_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "toolkit").rglob("*.py")}


@needs_make
def test_toolkit_is_the_installed_wheel_not_the_checkout():
    import toolkit

    here = Path(toolkit.__file__).resolve()
    assert here != ROOT / "toolkit" / "__init__.py", f"tests imported the checkout ({here}), not the installed wheel"
    assert "site-packages" in here.parts
    # child interpreters (the edge-side tests run in them) import the same installed copy
    r = subprocess.run([sys.executable, "-c", "import toolkit.runtimes.litert, toolkit; print(toolkit.__file__)"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "site-packages" in Path(r.stdout.strip()).resolve().parts, r.stdout


@needs_make
def test_the_wheel_holds_every_module_of_the_package():
    wheels = sorted((ROOT / WHEEL_DIR).glob("mnisttk-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert "toolkit/runtimes/onnxruntime.py" in names and "toolkit/exporters/onnx.py" in names


def test_every_subpackage_is_declared_for_the_wheel():
    """The same fault without building: every folder of the package is matched by setuptools' find."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    from fnmatch import fnmatch

    folders = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "toolkit").rglob("__init__.py")}
    assert folders >= {"toolkit", "toolkit.runtimes", "toolkit.exporters"}
    assert all(any(fnmatch(f, pat) for pat in include) for f in folders), (folders, include)
