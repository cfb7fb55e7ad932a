"""Errors caused by what a user gave us, as opposed to bugs.

Every one is a ``ValueError`` whose message says what is wrong and what to do; the CLI prints
it and the dashboard shows it as a message instead of a traceback.
"""

import logging

log = logging.getLogger("lunglab")


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


def failure_reason(exc: BaseException) -> str:
    """What a reading library's exception means, in the lab's words, for a user-facing message.

    A library's own text ("image file is truncated (7 bytes not processed)", "Error while
    deserializing: header too large") names its internals, not the file's problem; it goes to the
    log for the operator instead.
    """
    text = " ".join(str(exc).split())
    log.info("reading failed: %s: %s", type(exc).__name__, text[:500])
    lowered = text.lower()
    if isinstance(exc, EOFError) or any(word in lowered for word in ("truncat", "end of file", "premature")):
        return "the file ends early, so part of it is missing"
    if isinstance(exc, MemoryError):
        return "decoding it needs more memory than this machine has"
    if isinstance(exc, NotImplementedError) or "unsupported" in lowered or "not supported" in lowered:
        return "it is encoded in a way this lab cannot read"
    return "its contents do not add up"
