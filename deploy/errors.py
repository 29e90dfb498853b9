"""Errors raised by `deploy`; the CLI turns each into one line and a non-zero exit code."""


class DeployError(Exception):
    """Base of every error `deploy` raises on purpose."""


class DeployConfigError(DeployError, ValueError):
    """A setting is out of range or names something unknown (bad batch list, backend)."""


class DeployInputError(DeployError):
    """A file or input the user gave cannot be used (missing, unreadable, wrong shape)."""


class MissingDependencyError(DeployError, ImportError):
    """An optional package is needed for what was asked and is not installed."""


class MeasurementError(DeployError):
    """A measurement cannot be trusted as asked: too few power samples, clocks not locked."""


class EngineMismatchError(DeployInputError):
    """A TensorRT engine was built for another TensorRT version or GPU, or says nothing of it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (or its type name): what a one-line error
    message quotes from the onnx, onnxruntime or torch error underneath."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
