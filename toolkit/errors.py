"""One error family for the whole toolkit; the CLI turns each into a one-line message."""


class ToolkitError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class DataError(ToolkitError):
    """MNIST could not be found, fetched or read."""


class CheckpointError(ToolkitError):
    """A checkpoint is missing, truncated or not one of ours."""


class ExportError(ToolkitError):
    """Exporting or quantizing an artifact failed."""


class PrecisionNotExportable(ExportError):
    """A converter took the model at its other precisions but not at this one (an int8 layer its
    delegate lacks): export retries only the others, not this one."""

    def __init__(self, precision: str, message: str):
        super().__init__(message)
        self.precision = precision


class ManifestError(ToolkitError):
    """The manifest or an artifact it lists is missing or does not match."""


class CheckpointAbsent(ManifestError):
    """The export's checkpoint is not in its folder: verify's reference is then reference.npz."""


class RuntimeUnavailable(ToolkitError):
    """An execution provider or device that was asked for is not there."""


class ImageError(ToolkitError):
    """An input image for `predict` cannot be read or is not usable."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type's name), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
