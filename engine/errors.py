"""Typed exceptions. The CLI turns any SpinertError into one line on stderr and exit code 2."""


class SpinertError(Exception):
    """Base class of every error a user can cause (bad input, missing model, stale engine...)."""


class InputError(SpinertError):
    """A CT or data folder that cannot be read or is not usable (missing, corrupt, not 3-D, NaNs, too large)."""


class DatasetError(SpinertError):
    """A VerSe-style folder with missing or mismatched files."""


class ModelError(SpinertError):
    """A model file or manifest that is missing, corrupt or does not match."""


class BackendError(SpinertError):
    """A runtime backend that is not installed or cannot run on this machine."""


class StaleEngineError(BackendError):
    """A TensorRT engine that no longer matches its model, library or GPU."""


class OutputExistsError(SpinertError):
    """An output file exists and --overwrite was not given."""
