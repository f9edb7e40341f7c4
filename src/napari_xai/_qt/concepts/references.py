"""Reference crops of a concept from a cohort run folder (placeholder until the CLI layout is merged)."""

from __future__ import annotations


def open_references(widget, folder=None, channel=None) -> list:
    widget._fail("opening references is not available yet.")
    return []
