"""Hand-off between the threads of streaming prediction (reader -> network -> writer).

Items travel through bounded :class:`queue.Queue` objects; a shared :class:`threading.Event`
(``stop``) tells every side to give up. The end of a stream is the :data:`END` sentinel; an
exception raised in a producer thread travels as a :class:`Failure` and is re-raised by the
consumer.
"""

from __future__ import annotations

import queue
import threading

#: sentinel put after the last item (and returned by :func:`get_unless_stopped` once stopped)
END = object()


class Failure:
    """An exception raised in a producer thread, passed to the consumer to re-raise."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def put_unless_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set (checked every 0.1 s while the queue is full);
    False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def get_unless_stopped(q: queue.Queue, stop: threading.Event):
    """Next item of ``q``; :data:`END` when the queue is empty and ``stop`` is set."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return END
