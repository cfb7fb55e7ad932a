"""Errors caused by what a user gave us, as opposed to bugs.

Every one is a ``ValueError`` whose message says what is wrong and what to do; the CLI prints
it and the dashboard shows it as a message instead of a traceback.
"""


class UserInputError(ValueError):
    """Base for errors the user can fix: a bad file, a wrong folder, an absurd parameter."""


class ScanError(UserInputError):
    """A scan could not be read (empty, truncated, not an image, too large, no pixel data)."""


class DatasetError(UserInputError):
    """A dataset folder is missing classes, empty, or laid out in a way we cannot read."""


class AttackParameterError(UserInputError):
    """An unknown attack name or a parameter out of its documented range."""


class CheckpointError(UserInputError):
    """A checkpoint or run directory is missing, truncated, tampered with or of the wrong shape."""
