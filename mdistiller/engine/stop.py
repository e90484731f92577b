"""A clean stop on SIGINT (Ctrl-C) or SIGTERM (preemption): finish the step, save, exit.

While :class:`StopSignals` is active, either signal only records a request; the trainer reads
:attr:`StopSignals.received` after each step, agrees with the other processes under torchrun,
writes `latest` and raises :class:`~mdistiller.errors.TrainingStopped`. A second Ctrl-C raises
KeyboardInterrupt at once.
"""

import os
import signal
import threading
from typing import Dict, Optional

__all__ = ["STOP_SIGNALS", "StopSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager turning SIGINT / SIGTERM into :attr:`received` (the first signal's number).

    Handlers are installed only in the main thread (Python allows no other); elsewhere the
    signals keep their handlers and :attr:`received` stays None. `announce` says whether to write
    a notice on stderr when a signal arrives (rank 0 under torchrun).
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None and self.announce:
            # os.write, not print: the handler may run while the main thread is inside a print.
            os.write(2, f"{signal.Signals(signum).name} received: stopping after this step and saving "
                        "'latest' (Ctrl-C again to stop at once).\n".encode())
        self.received = self.received or signum
