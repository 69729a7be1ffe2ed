"""A run's bookkeeping actors, in one place: tiny Ray actors (no CPU) on the driver's node.

    Bookkeeping.start()      the stream's two: a `BadImageLedger` and an `EpochClock`
    start_board()            the console's `ProgressBoard` (`progress.Console` starts it)

    BadImageLedger   the decode tasks record unreadable images; counted exactly (distinct ids)
    EpochClock       rank 0 sets the epoch the stream produces; the tasks read it (`epochs.py`)
    ProgressBoard    rank 0 posts progress events; the driver's console takes them (`progress.py`)

Design decisions:
- Each actor lives on the node of the process that made it (the driver; in a sweep, the trial)
  and reserves no CPU (`cluster.on_driver_node`): bookkeeping never competes with the training or
  the decode tasks, and a lost worker node takes none of it along.
- Their class names are what Ray's state API shows, so they stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .cluster import on_driver_node


class BadImageLedger:
    """Distinct unreadable image ids seen by the decode tasks."""

    def __init__(self):
        self._bad: dict[str, str] = {}

    def record(self, bad: list) -> int:
        for ident, reason in bad:
            self._bad.setdefault(ident, reason)
        return len(self._bad)

    def count(self) -> int:
        return len(self._bad)

    def items(self) -> dict[str, str]:
        return dict(self._bad)


class EpochClock:
    """The epoch the training stream is producing."""

    def __init__(self):
        self._epoch = 0

    def set(self, epoch: int) -> int:
        self._epoch = int(epoch)
        return self._epoch

    def get(self) -> int:
        return self._epoch


class ProgressBoard:
    """Events posted by rank 0, taken by the driver."""

    def __init__(self):
        self._events: list[dict] = []

    def post(self, event: dict) -> None:
        self._events.append(event)

    def take(self) -> list[dict]:
        events, self._events = self._events, []
        return events


def _start(cls):
    import ray

    return ray.remote(cls).options(**on_driver_node()).remote()


def start_ledger():
    return _start(BadImageLedger)


def start_clock():
    return _start(EpochClock)


def start_board():
    return _start(ProgressBoard)


@dataclass(frozen=True)
class Bookkeeping:
    """The stream's actors (handles): where unreadable images are counted and which epoch it is.
    Either may be None (a test's stream without a ledger; the held-out slice has no epoch)."""

    ledger: Optional[object] = None  # BadImageLedger
    clock: Optional[object] = None  # EpochClock

    @classmethod
    def start(cls) -> "Bookkeeping":
        return cls(start_ledger(), start_clock())

    def bad_images(self) -> dict:
        """{image id: reason} of every distinct unreadable image the ledger has seen."""
        import ray

        return ray.get(self.ledger.items.remote())
