"""Stopping a run halfway: Ctrl-C, SIGTERM, or a control machine that can no longer keep records.

Moves run in worker threads, and a signal reaches only the main thread, so its handler only
records the request; every move looks at it between steps and in every wait (`check`,
`sleep`), stops there and undoes what it did.  The undo runs shielded: it ignores the
request, because a guest half moved is down.  A second signal during the undo is answered
with a line and otherwise ignored; only SIGKILL stops the undo, and leaves the journal for
`fab rollback`.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from contextlib import contextmanager

from .errors import ToolError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(ToolError):
    """The run was asked to stop; raised where a move looks, so that it undoes what it did."""


class Interruption:
    """One run's stop request, shared by every move of the run."""

    def __init__(self) -> None:
        self.reason = ""
        self.code = 1
        self._event = threading.Event()
        # Shielded sections around the current code: a context variable, so that the threads an
        # undo starts for its probes (remote.concurrently runs them in its context) are shielded too.
        self._depth = contextvars.ContextVar(f"shield-{id(self)}", default=0)
        self._undoing = 0                 # shielded sections in all threads
        self._count_lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str, code: int = 1) -> bool:
        """Ask every move of the run to stop; True for the first request."""
        if self._event.is_set():
            return False
        self.reason, self.code = reason, code
        self._event.set()
        return True

    @property
    def shielded(self) -> bool:
        return self._depth.get() > 0

    @contextmanager
    def shield(self):
        """An undo: requests are not acted on inside it (in this thread, and the threads it runs
        its probes in)."""
        token = self._depth.set(self._depth.get() + 1)
        with self._count_lock:
            self._undoing += 1
        try:
            yield
        finally:
            self._depth.reset(token)
            with self._count_lock:
                self._undoing -= 1

    def check(self) -> None:
        """Raise Interrupted if the run was asked to stop (not inside an undo)."""
        if self._event.is_set() and not self.shielded:
            raise Interrupted(self.reason, self.code)

    def sleep(self, seconds: float) -> None:
        """A pause that a stop request ends at once (not inside an undo)."""
        if self.shielded:
            time.sleep(seconds)
        else:
            self._event.wait(seconds)
            self.check()

    def acquire(self, lock) -> None:
        """Take a semaphore or lock, giving up when the run is asked to stop."""
        while not lock.acquire(timeout=0.2):
            self.check()

    @contextmanager
    def on_signals(self):
        """SIGINT and SIGTERM request the stop instead of raising in the main thread.

        The handler writes straight to stderr: it runs between two bytecodes of the main
        thread, which may hold the lock that progress lines take.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self.request(f"interrupted by {name}", EXIT_CODES[signum]) and not self._undoing:
                _stderr(f"! {name}: stopping: no new step starts; what ran is undone "
                        f"(another signal does not stop the undo)")
            else:
                _stderr(f"! {name} ignored: the undo must finish, or guests stay down; "
                        f"only SIGKILL stops it, and then `fab rollback` finishes it")

        previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


def _stderr(line: str) -> None:
    os.write(2, (line + "\n").encode())
