"""Shared by the test files: the CLI runner and the torch-free checks."""

import textwrap

from click.testing import CliRunner

from toolkit.cli import main

LOOSE = ["--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-max-clipped", "100", "--int8-min-ood-agreement", "0",
         "--rounds", "1"]  # 40 synthetic test images: gate only fp32; one timing round (test_timing asks for more)


def run(*args):
    """`mnisttk ARGS` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args])


# Run first in a fresh interpreter: makes torch (and torchvision) impossible to import.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
    sys.meta_path.insert(0, BlockTorch())
""")


def third_party_check(allowed: set) -> str:
    """Code that fails unless every imported top-level package outside the standard library is in
    `allowed` (an allow-list, so onnx or torch creeping into the edge side fails)."""
    return textwrap.dedent(f"""
        third = {{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"toolkit"}}
        third = {{m for m in third if not m.startswith("_") and m != "cython_runtime"}}
        assert third <= set({sorted(allowed)!r}), f"edge side imported {{sorted(third - set({sorted(allowed)!r}))}}"
    """)
