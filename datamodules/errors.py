"""User-facing data errors: the CLI prints the message as one line and exits with code 2."""


class DataError(ValueError):
    """Bad input data or an impossible data request (message is one line, names the culprit)."""

    def __init__(self, message: str):
        # a user's name or path may hold a line break: shown escaped, so the message stays one line
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
