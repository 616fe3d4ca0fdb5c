"""Exceptions the command line turns into one-line messages and exit codes."""


class SdeditError(Exception):
    """Base class of the errors sdedit raises on purpose."""

    exit_code = 1


class InputError(SdeditError, ValueError):
    """Bad input from the user: a file, a setting or a checkpoint that cannot be used (exit 2)."""

    exit_code = 2


class ModelUnavailableError(SdeditError):
    """A model that is neither cached nor downloadable right now (exit 1)."""

    exit_code = 1


class SamplingError(SdeditError):
    """Sampling produced NaN or inf; nothing is written (exit 1)."""

    exit_code = 1
