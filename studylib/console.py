"""What a sweep shows on the terminal: one-line notes and the progress bar."""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

from studylib.redact import redact


def say(message: str) -> None:
    """A line on stderr that does not tear the progress bar; passwords masked."""
    tqdm.write(f"studylib: {redact(message)}", file=sys.stderr)


class Progress:
    """Trials done of total, best value so far, and the current trial's epoch."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = tqdm(total=total, initial=done, unit="trial", disable=not enabled, leave=True)
        self.best = math.inf
        self._trial: int | str = -1
        self._shown = 0.0

    def start_trial(self, number: int | str) -> None:
        self._trial = number

    def epoch(self, epoch: int, max_epochs: int) -> None:
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            best = f"{self.best:.4f}" if math.isfinite(self.best) else "-"
            self.bar.set_postfix_str(
                f"best val/loss {best} | trial {self._trial} epoch {epoch}/{max_epochs}"
            )

    def sync(self, done: int) -> None:
        """Show trials finished by every worker of the study, not only this one."""
        if done != self.bar.n:
            self.bar.n = done
            self.bar.refresh()

    def finish_trial(self, value: float | None) -> None:
        if value is not None and value < self.best:
            self.best = value
        if self.bar.total is None or self.bar.n < self.bar.total:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
