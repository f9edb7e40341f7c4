"""Error and warning types shared by the engine and its adapters."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix. ``str(err)`` is one actionable line.

    Adapters show it without a traceback: the CLI exits with code 2, the
    widgets show a notification.
    """


class Cancelled(Exception):
    """Raised inside long work when the user asked to stop."""


class XaiWarning(UserWarning):
    """A result is valid but may not mean what the user expects."""
