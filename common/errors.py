"""User errors: bad input or an impossible request. The CLI prints the message as one line and exits with code 2.

Every layer raises these (data, training, hpo, campaign, report), so they live here, below all of them.
"""


class ConfigError(ValueError):
    """An impossible or unknown configuration value."""


class ReportError(ConfigError):
    """Logs the report cannot use as they are (a damaged record, predictions that contradict the data)."""


class DataError(ValueError):
    """Bad input data or an impossible data request (message is one line, names the culprit)."""

    def __init__(self, message: str):
        # a user's name or path may hold a line break: shown escaped, so the message stays one line
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class MemoryPreflightError(ValueError):
    """The run cannot fit the device's memory: one line with what it needs, has, and what would fit."""


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or exploded (`Forecaster`); the message says where (docs/lessons.md #14).
    Not a refused setting: `fit` exits 1, an hpo trial is recorded as failed."""
