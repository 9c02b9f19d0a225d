"""Periodic progress logging with rate and ETA, readable in server logs and terminals alike."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("mammolabel")


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts work units and logs ``desc done/total (pct) ... ETA`` at most every ``every_s`` seconds."""

    def __init__(self, total: int, desc: str, every_s: float = 10.0):
        self.total, self.desc, self.every_s = max(1, total), desc, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def eta(self) -> float:
        elapsed = time.monotonic() - self.start
        return elapsed / max(1, self.done) * (self.total - self.done)

    def update(self, n: int = 1, **fields: float | str) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.log(**fields)

    def log(self, **fields: float | str) -> None:
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        elapsed = format_seconds(time.monotonic() - self.start)
        logger.info(
            f"{self.desc} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) {extra} "
            f"elapsed {elapsed} ETA {format_seconds(self.eta())}"
        )
