"""Viewer events a dock follows: connected together when it opens, disconnected together when it closes."""

from __future__ import annotations

from typing import Iterable

Connection = tuple  # (event emitter, callback)


def connect_all(connections: Iterable[Connection]) -> list[Connection]:
    """Connect each ``(emitter, callback)``; returns them as a list, to give to :func:`disconnect_all` later."""
    connections = list(connections)
    for emitter, callback in connections:
        emitter.connect(callback)
    return connections


def disconnect_all(connections: Iterable[Connection]) -> None:
    """Disconnect each ``(emitter, callback)``; one already gone (or its viewer closed) is skipped."""
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except Exception:  # noqa: BLE001 - already disconnected, or the emitter is gone
            pass
