"""Errors raised by `compressor`; the CLI prints each as one line with a non-zero exit code."""


class CompressorError(Exception):
    """Base of every error `compressor` raises on purpose."""


class ConfigError(CompressorError, ValueError):
    """A recipe or config value is invalid or unknown; the message names the field."""


class InputError(CompressorError):
    """A file, directory or dataset the user pointed at is missing or unusable."""


class UnsupportedModelError(CompressorError):
    """The model cannot do what was asked (too few removable blocks, unknown name)."""


class TrainingError(CompressorError):
    """Training stopped (a NaN loss); the last good checkpoint stays on disk."""


class InUseError(InputError):
    """Another live process holds the output directory (or grid cell) asked for."""


class GridError(CompressorError):
    """Cells of the lottery grid failed for good; the others finished and are kept."""
