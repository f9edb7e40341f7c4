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


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_few(items: list[str], n: int = 3) -> str:
    """The first ``n`` items, then how many there are in all."""
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")
