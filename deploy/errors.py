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


class UnsafePathError(DeployInputError, OSError):
    """A path where the project would write or read is not a plain file of ours: a symbolic
    link, a device, a FIFO or socket, a stored model or input, or a file of implausible size.

    Also an OSError, so code that wraps write failures ("cannot write results to X: ...")
    wraps this too; its text is the reason alone, without "[Errno N]".
    """

    def __init__(self, message: str, errno_code: int = 0) -> None:
        super().__init__(errno_code, message)

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(DeployError, OSError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT); the file it was replacing is intact."""

    def __init__(self, message: str, errno_code: int) -> None:
        super().__init__(errno_code, message)

    def __str__(self) -> str:
        return str(self.strerror)


class CudaError(DeployError):
    """A CUDA runtime call made through cuda-python failed; `error_name` is CUDA's name."""

    def __init__(self, message: str, error_name: str) -> None:
        super().__init__(message)
        self.error_name = error_name
