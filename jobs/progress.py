"""Progress lines on the driver while a job's units of work (input files, shard files, batches) finish.

At most one line every `PROGRESS_EVERY_S` seconds, and a last one when the work ends: units done / total,
running counts, the rate of the first count and an estimate of the time left (from the units done so far),
e.g. ``  12/40 files · 1,204,331 records read · 1,198,002 written · 6,329 rejected · 2,310 records/s, about
0:03:10 left``. Lines are printed (and flushed) to the stream the job reports to, never through Ray, so they
read the same in a terminal, a log file and `ray job logs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from schemas.manifest import PartitionRecord

__all__ = ["PROGRESS_EVERY_S", "PartitionProgress", "Progress", "duration", "rate"]

PROGRESS_EVERY_S = 10.0


class Progress:
    """Progress lines for `total` units named `unit`, with running `counts` (one label or more, in order; the
    first one's rate is shown, as `rate_unit`/s)."""

    def __init__(
        self,
        total: int,
        out_stream: Any,
        unit: str = "files",
        counts: Sequence[str] = ("records read", "written", "rejected"),
        rate_unit: str = "records",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.out_stream = out_stream
        self.unit = unit
        self.labels = tuple(counts)
        self.rate_unit = rate_unit
        self.clock = clock
        self.started = self.shown = clock()
        self.done = self.shown_done = 0
        self.counts = [0] * len(self.labels)

    def advance(self, *counts: int, units: int = 1) -> None:
        """`units` more units done, adding `counts` (in the order of the labels) to the running counts."""
        self.done += units
        for index, count in enumerate(counts):
            self.counts[index] += count
        if self.clock() - self.shown >= PROGRESS_EVERY_S:
            self._show()

    def finish(self) -> None:
        """The last line, unless the last update printed it."""
        if self.done != self.shown_done:
            self._show()

    def _show(self) -> None:
        now = self.clock()
        self.shown, self.shown_done = now, self.done
        elapsed = max(now - self.started, 1e-9)
        left = self.total - self.done
        eta = f", about {duration(elapsed / self.done * left)} left" if self.done and left > 0 else ""
        counted = "".join(
            f" · {count:,} {label}" for count, label in zip(self.counts, self.labels, strict=True)
        )
        per_second = rate(self.counts[0] / elapsed, self.rate_unit)
        print(
            f"  {self.done}/{self.total} {self.unit}{counted} · {per_second}{eta}",
            file=self.out_stream,
            flush=True,
        )


class PartitionProgress(Progress):
    """The pretokenize job's lines: input files, records read / written / rejected, records/s."""

    def __init__(self, files: int, out_stream: Any, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(files, out_stream, clock=clock)

    def update(self, record: PartitionRecord) -> None:
        """One more input file done, with what it gave."""
        self.advance(record.totals.read, record.totals.written, record.totals.rejected_total)


def rate(per_second: float, unit: str = "records") -> str:
    """``2,310 records/s``; below one a second, two decimals (a slow rate is not rounded to 0)."""
    return f"{per_second:,.0f} {unit}/s" if per_second >= 1 else f"{per_second:.2f} {unit}/s"


def duration(seconds: float) -> str:
    """``H:MM:SS``, rounded to the second."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
