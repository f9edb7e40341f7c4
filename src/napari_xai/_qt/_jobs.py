"""Background work for the widgets: one way to start a worker and one way to report what went wrong.

Every widget runs long work in a napari worker thread and touches layers only
in the ``returned`` callback. A user's mistake (:class:`UserError`) becomes a
one-line status and notification, a cancel says that nothing changed, and
anything else is logged with its traceback and shown as an internal error.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..core.errors import Cancelled, UserError

log = logging.getLogger("napari_xai")

CANCELLED = "cancelled; no layer was changed."


def start_worker(work: Callable, *args: Any, returned: Callable, errored: Callable,
                 finished: Callable | None = None) -> Any:
    """Create and start a worker running ``work(*args)``, wired to the three callbacks; returns the worker."""
    from napari.qt.threading import create_worker

    # errors go to `errored` only (without _connect, superqt would also re-raise them in the event loop)
    worker = create_worker(work, *args, _start_thread=False, _connect={"errored": errored})
    worker.returned.connect(returned)
    if finished is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker


def fail(set_status: Callable[[str], None], message: str) -> None:
    """Show ``message`` as the widget's status and as a napari error notification."""
    from napari.utils.notifications import show_error

    set_status(f"error: {message}")
    show_error(f"napari-xai: {message}")


def report_error(exc: BaseException, set_status: Callable[[str], None]) -> bool:
    """Report a worker's error; True when it was a cancel (callers may reset their progress bar)."""
    if isinstance(exc, Cancelled):
        set_status(CANCELLED)
        return True
    if isinstance(exc, UserError):
        fail(set_status, str(exc))
    else:
        log.error("napari-xai internal error", exc_info=exc)
        fail(set_status, f"internal error: {type(exc).__name__}: {exc}")
    return False


class Job:
    """One dock's background work: at most one worker at a time, a cancel flag, and progress.

    The worker thread calls :meth:`report` (or the owner fills ``progress`` as it likes); a GUI-thread timer calls
    ``show()`` every ``interval_ms`` while the worker runs, to draw ``progress``. ``finished`` runs after the
    worker has gone (``busy`` is False again).
    """

    def __init__(self, parent, show: Callable[[], None], interval_ms: int = 100):
        from qtpy.QtCore import QTimer

        self.worker: Any = None
        self.cancel_event = threading.Event()
        self.progress: list = [0.0, ""]
        self.timer = QTimer(parent)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(show)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def should_stop(self) -> bool:
        return self.cancel_event.is_set()

    def report(self, fraction: float, message: str) -> None:
        """Progress from the worker thread (read by the GUI-thread timer)."""
        self.progress[:] = [fraction, message]

    def cancel(self) -> None:
        self.cancel_event.set()

    def start(self, work: Callable, *, returned: Callable, errored: Callable,
              finished: Callable | None = None) -> None:
        """Run ``work()`` in a worker; the callbacks run on the GUI thread."""
        self.cancel_event.clear()
        self.timer.start()

        def done():
            self.timer.stop()
            self.worker = None
            if finished is not None:
                finished()

        self.worker = start_worker(work, returned=returned, errored=errored, finished=done)


def show_progress(bar, progress) -> None:
    """Draw ``progress`` ([fraction, message], written by a worker) on a magicgui ``ProgressBar``."""
    frac, msg = progress
    bar.value = int(round(100 * frac))
    bar.label = msg[:40] if msg else "progress"
