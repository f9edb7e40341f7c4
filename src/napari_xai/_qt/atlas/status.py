"""The region under the cursor in napari's status bar, after napari's own layer value."""

from __future__ import annotations

from .._events import connect_all, disconnect_all

STATUS_SEP = "  ‖  "


def decorate(status, text: str):
    """napari's status (a string, or a dict with ``coordinates``) with ``text`` after the separator."""
    if not text:
        return status
    if isinstance(status, dict):
        st = dict(status)
        coords = str(st.get("coordinates", "")).split(STATUS_SEP)[0]
        st["coordinates"] = f"{coords}{STATUS_SEP}{text}"
        return st
    base = str(status or "").split(STATUS_SEP)[0]
    return f"{base or 'Ready'}{STATUS_SEP}{text}"


class StatusBarText:
    """Keeps one text appended to ``viewer.status``: napari recomputes the status on every mouse move."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.text = ""
        self._setting = False
        self._connections = connect_all([(viewer.events.status, self._on_status)])

    def set(self, text: str) -> None:
        self.text = text
        self._push()

    def _push(self) -> None:
        if self._setting:
            return
        new = decorate(self.viewer.status, self.text)
        if new != self.viewer.status:
            self._setting = True
            try:
                self.viewer.status = new
            finally:
                self._setting = False

    def _on_status(self, event=None) -> None:
        if not self._setting and self.text:
            self._push()

    def disconnect(self) -> None:
        disconnect_all(self._connections)
