"""The ``napari-xai`` command: the parser and ``main`` in :mod:`.main`, shared options in :mod:`.options`,
one module per command."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
