"""The errors a user can fix: one family, turned by the CLI into one line and exit status 2.

Everything else (an internal bug, an unexpected library failure) keeps its
traceback. Each message names the value received and the fix. The family
derives from ``ValueError`` so that library callers can catch bad input the
usual way.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input the user can fix: the message is one line naming the value and the fix."""


class ConfigError(UserError):
    """A setting (flag, preset, config file value) that is out of range or unknown."""


class DataError(UserError):
    """Input data that cannot be used: a missing, truncated or corrupt file, or bad labels."""


class CheckpointError(UserError):
    """A model file that cannot be read, or does not fit the model or the dataset."""


class DivergedError(UserError):
    """Training whose loss became NaN or infinite: a setting (learning rate, precision, image size) to change."""


class RunDirError(UserError):
    """A run directory that cannot be made, written or continued with the given configuration."""
