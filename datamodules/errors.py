"""User-facing data errors: the CLI prints the message as one line and exits with code 2."""


class DataError(ValueError):
    """Bad input data or an impossible data request (message is one line, names the culprit)."""
