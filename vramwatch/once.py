"""Say a failure once, remind of it, and say once when it works again.

Every part of vramwatch that can keep failing (a step of the loop, the state
file, the metrics textfile, the journal, the trace) is logged the same way:
the failure when it starts, again when its text changes (where a new text is
news) and every reminder period (where the site reminds), and once that it
works again, not on every tick in between. :class:`Once` holds that rule; the
caller says the words and passes the time: no I/O, no clock.
"""

from __future__ import annotations


class Once:
    """One thing that can fail, and what has been said about it.

    ``remind_ns``: say a failure that goes on again this long after it was last
    said (``None``: never). ``changes``: a failure whose text differs from the
    one said is news (``False``: only its start is).
    """

    __slots__ = ("_told_ns", "changes", "error", "remind_ns")

    def __init__(self, remind_ns: int | None = None, *, changes: bool = True) -> None:
        self.remind_ns = remind_ns
        self.changes = changes
        self.error: str | None = None  # the failure last said; None: it works
        self._told_ns = 0  # when it was said

    @property
    def failing(self) -> bool:
        return self.error is not None

    def failed(self, error: str, now_ns: int = 0) -> bool:
        """It failed with ``error`` at ``now_ns``; True when that is to be said."""
        if self.error is not None:
            news = self.changes and error != self.error
            due = self.remind_ns is not None and now_ns - self._told_ns >= self.remind_ns
            if not news and not due:
                return False
        self.error, self._told_ns = error, now_ns
        return True

    def worked(self) -> bool:
        """It works; True when it had been failing (to say it recovered, once)."""
        was, self.error = self.error is not None, None
        return was
