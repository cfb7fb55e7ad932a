"""Turn failures into calm messages: what went wrong and what to do, never a traceback.

User-caused problems (:class:`pipeline.errors.UserInputError`) carry their own advice and are
shown as they are. Anything else is a bug: the page says so in plain words and the traceback
goes to the server log, where the operator can read it and a viewer cannot.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from pipeline.errors import UserInputError

log = logging.getLogger("lunglab.dashboard")


def describe_error(error: BaseException, action: str) -> str:
    """The sentence a user sees for ``error`` raised while doing ``action``."""
    if isinstance(error, UserInputError):
        return f"Could not {action}: {error}"
    if isinstance(error, MemoryError):
        return f"Could not {action}: the machine ran out of memory. Try a smaller image size or batch."
    return (
        f"Could not {action} because of an unexpected internal error ({type(error).__name__}). "
        "Nothing saved was changed; the details are in the server log."
    )


@contextmanager
def shown_errors(action: str) -> Iterator[None]:
    """Run the block; show any failure as an ``st.error`` message and carry on drawing the page."""
    try:
        yield
    except (
        Exception
    ) as error:  # every failure becomes a message; Streamlit's own control flow is BaseException
        if not isinstance(error, UserInputError):
            log.exception("unexpected error while trying to %s", action)
        st.error(describe_error(error, action), icon=":material/error:")
