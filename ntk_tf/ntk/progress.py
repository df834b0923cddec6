"""Progress of long jobs: a bar on a terminal, absl log lines elsewhere.

    done/total units, rate (units/s) and ETA = (total - done) / rate

`Progress(total, desc=...)` is used for Gram blocks and can be reused for
training steps or any countable work.
"""

import sys
import time
from typing import Optional, TextIO

from absl import logging


def _format_seconds(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):  # NaN or inf.
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
  """Reports `done / total` units with rate and ETA.

  On a terminal (`stream.isatty()`) it redraws one bar line; otherwise it
  writes an absl INFO line at most every `log_every_s` seconds and at the end.

  Args:
    total: number of units of the whole job.
    desc: short label, e.g. "ntk_gram".
    unit: unit name, e.g. "blocks".
    initial: units already done (a resumed job); they do not count for the rate.
    enabled: False makes every call a no-op.
    stream: where the bar goes (default sys.stderr).
    log_every_s: minimum seconds between log lines when not on a terminal.
  """

  def __init__(self, total: int, *, desc: str = "", unit: str = "it", initial: int = 0,
               enabled: bool = True, stream: Optional[TextIO] = None,
               log_every_s: float = 30.0):
    self.total = int(total)
    self.done = int(initial)
    self.desc = desc
    self.unit = unit
    self.enabled = enabled
    self._initial = int(initial)
    self._stream = stream if stream is not None else sys.stderr
    self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
    self._log_every_s = log_every_s
    self._start = time.monotonic()
    self._last_log = float("-inf")
    self._closed = False

  @property
  def rate(self) -> float:
    """Units per second since the start, counting only units done in this run."""
    elapsed = time.monotonic() - self._start
    return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

  @property
  def eta_s(self) -> float:
    """Seconds left at the current rate (inf before the first unit)."""
    rate = self.rate
    return (self.total - self.done) / rate if rate > 0 else float("inf")

  def message(self) -> str:
    """Returns the status line, e.g. "ntk_gram 3/10 blocks [30%] 0.50 blocks/s ETA 00:14"."""
    percent = 100.0 * self.done / self.total if self.total else 100.0
    return (f"{self.desc} {self.done}/{self.total} {self.unit} [{percent:3.0f}%] "
            f"{self.rate:.3g} {self.unit}/s ETA {_format_seconds(self.eta_s)}").strip()

  def update(self, n: int = 1) -> None:
    """Marks `n` more units done and reports."""
    self.done += n
    if not self.enabled:
      return
    if self._tty:
      width = 30
      filled = int(width * self.done / self.total) if self.total else width
      self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.message()}")
      self._stream.flush()
    else:
      now = time.monotonic()
      if now - self._last_log >= self._log_every_s or self.done >= self.total:
        self._last_log = now
        logging.info("%s", self.message())

  def close(self) -> None:
    """Ends the bar line (terminal) and logs the final state once."""
    if self._closed:
      return
    self._closed = True
    if self.enabled and self._tty:
      self._stream.write("\n")
      self._stream.flush()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
