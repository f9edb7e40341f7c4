"""Loading an atlas onto a volume grid off the GUI thread, for the Atlas dock."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from ...core import atlas as at
from ...core.errors import UserError


class AtlasLoader(QObject):
    """Loads an atlas and resamples it onto a grid in a worker thread (or at once with ``sync``).

    Signals: ``loaded(AtlasOnGrid)``; ``failed(message)`` for a user mistake (one line) or an internal error
    (which is raised again after the signal, so it is logged).
    """

    loaded = Signal(object)
    failed = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.busy = False
        self._worker = None

    def load(self, source: str, labels: str | None, shape, affine, threshold: float, axes, *, sync: bool = False):
        def work():
            try:
                grid = at.atlas_on_grid(at.load_atlas(source, labels=labels), shape, affine, threshold=threshold)
                grid.plane_outlines(axes)  # warm the cache of the displayed plane off the GUI thread
            except UserError as exc:  # a user mistake is a message to show, not a crash
                return ("error", str(exc))
            return grid

        self.busy = True
        if sync:
            self._done(work())
            return
        from napari.qt.threading import create_worker

        self._worker = worker = create_worker(work)
        worker.returned.connect(self._done)
        worker.errored.connect(self._errored)
        worker.start()

    def _done(self, result) -> None:
        self.busy = False
        self._worker = None
        if isinstance(result, tuple):
            self.failed.emit(result[1])
        else:
            self.loaded.emit(result)

    def _errored(self, exc: BaseException) -> None:
        self.busy = False
        self._worker = None
        if isinstance(exc, UserError):
            self.failed.emit(str(exc))
            return
        self.failed.emit(f"internal error: {type(exc).__name__}: {exc}")
        raise exc
