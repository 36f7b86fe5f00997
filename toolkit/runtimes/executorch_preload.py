"""Imported by the bounded children's forkserver when a verify run has ExecuTorch rows (RuntimeSpec.preload):
ExecuTorch's runtime and program reader, without its compiler (runtimes/executorch.py: import_runtime), so
each row's child starts with them."""

from toolkit.runtimes.executorch import import_runtime, quiet_torch_logs

quiet_torch_logs()
try:
    import_runtime()
except ImportError:
    pass  # not installed: the rows say so themselves
