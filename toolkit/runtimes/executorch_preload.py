"""Imported by the bounded children's forkserver when a verify run has ExecuTorch rows (RuntimeSpec.preload):
ExecuTorch's runtime and program reader, without its compiler (runtimes/executorch.py: import_runtime), so
each row's child starts with them."""

import contextlib

from toolkit.runtimes.executorch import import_runtime, quiet_torch_logs

quiet_torch_logs()
with contextlib.suppress(ImportError):  # not installed: the rows say so themselves
    import_runtime()
