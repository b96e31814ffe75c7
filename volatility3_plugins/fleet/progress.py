"""A progress bar over a sweep's images, on standard error.

On a terminal, one line redrawn in place: a bar, images done of all, how many were refused or
failed, the time spent and an estimate of the time left. Elsewhere (a log file, CI), one line
per image as it ends, which a log keeps and a terminal bar would smear.
"""

import sys
import time
from typing import Dict, Optional, TextIO

BAR_WIDTH = 30
#: Redraw from the line's start and clear what a longer previous line left.
REDRAW = "\r\x1b[K"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts images as they end; ``total`` counts only those this run works on."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, interactive: Optional[bool] = None) -> None:
        self.total = total
        self.done = 0
        self.by_status: Dict[str, int] = {}
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = interactive if interactive is not None else bool(isatty and isatty())
        self.started = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        problems = ", ".join(f"{count} {status}" for status, count in sorted(self.by_status.items()) if status != "ok")
        left = ""
        if 0 < self.done < self.total:
            left = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} images"
            + (f" ({problems})" if problems else "")
            + f", {_clock(elapsed)} elapsed{left}"
        )

    def start(self) -> None:
        if self.interactive and self.total:
            self.stream.write(REDRAW + self.line())
            self.stream.flush()

    def update(self, name: str, status: str, seconds: float) -> None:
        self.done += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if self.interactive:
            self.stream.write(REDRAW + self.line())
        else:
            self.stream.write(f"[{self.done}/{self.total}] {name}: {status} ({seconds:.1f} s)\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.interactive and self.total:
            self.stream.write("\n")
            self.stream.flush()
