"""Runs the cached core chain for the explorer: throttled, latest-state-only, off the GUI thread when slow.

The first event of a drag starts at once (the leading edge); what follows within :data:`THROTTLE_MS` is
coalesced; at most one computation runs, and when it ends the latest control state is computed once, so
dragging never queues stale work. Steps that only need the size stage (a few ms) run on the GUI thread,
the others in one napari ``thread_worker``; layers are touched only on the GUI thread (``returned``).
"""

from __future__ import annotations

import logging
from typing import Callable

from qtpy.QtCore import QObject, QTimer

from ...core import postprocess as pp
from ...core.errors import UserError
from ...core.explorer import Explorer

log = logging.getLogger(__name__)

THROTTLE_MS = 30
SYNC_STAGES = {"size"}  # stages cheap enough for the GUI thread
COMPUTING = "computing…"


class UpdateScheduler(QObject):
    """Turns control changes into :meth:`Explorer.update` calls and hands results to ``apply``.

    ``params`` returns the controls' (unvalidated) parameters; ``apply`` shows a result; ``status`` shows a
    line (``""`` clears it, ``None`` asks for the current text); ``error`` shows a refusal.
    """

    def __init__(self, params: Callable[[], pp.PostParams], apply: Callable, error: Callable[[str], None],
                 status: Callable, parent=None):
        super().__init__(parent)
        self.explorer: Explorer | None = None
        self._params, self._apply, self._error, self._status = params, apply, error, status
        self.worker = None
        self.attempted: pp.PostParams | None = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(THROTTLE_MS)
        self.timer.timeout.connect(self.run)

    def set_explorer(self, ex: Explorer | None) -> None:
        self.explorer = ex
        self.attempted = None
        if ex is None:
            self.timer.stop()

    def on_control(self, *_args) -> None:
        """A slider or spin box moved: when idle, start at once; else coalesce (:meth:`schedule`)."""
        if self.timer.isActive() or self.worker is not None or self.explorer is None:
            self.schedule()
            return
        self.timer.start()
        self.run()

    def schedule(self, *_args) -> None:
        if not self.timer.isActive():
            self.timer.start()

    def wanted(self):
        try:
            return self._params().validated()
        except UserError:
            return self._params()

    @property
    def idle(self) -> bool:
        """Nothing running or pending, and the controls' state computed (or refused)."""
        return self.explorer is None or (not self.timer.isActive() and self.worker is None
                                         and self.attempted == self.wanted())

    def run(self) -> None:
        ex = self.explorer
        if ex is None or self.worker is not None:
            return  # a running worker re-checks the controls when it ends
        try:
            params = self._params().validated()
            stages = ex.stages_needed(params)
        except UserError as exc:
            self.attempted = self._params()
            self._error(str(exc))
            return
        self.attempted = params
        if not stages and ex.result is not None and ex.result.params == params:
            return
        if set(stages) <= SYNC_STAGES:
            try:
                res = ex.update(params)
            except UserError as exc:
                self._error(str(exc))
                return
            self._apply(res)
            return
        self._start_worker(ex, params)

    def _start_worker(self, ex: Explorer, params: pp.PostParams) -> None:
        from napari.qt.threading import create_worker

        self._status(COMPUTING)
        worker = create_worker(ex.update, params, _start_thread=False)
        worker.returned.connect(lambda res, ex=ex: self._apply(res) if ex is self.explorer else None)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        worker.start()

    def _on_worker_error(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            self._error(str(exc))
        else:
            log.error("explorer update failed", exc_info=exc)
            self._error(f"internal error: {type(exc).__name__}: {exc}")

    def _on_worker_finished(self) -> None:
        self.worker = None
        if self._status(None) == COMPUTING:
            res = self.explorer.result if self.explorer is not None else None
            self._status(res.summary() if res is not None else "")
        if self.explorer is not None and self.attempted != self.wanted():
            self.schedule()  # the controls moved while the worker ran: compute their latest state once
