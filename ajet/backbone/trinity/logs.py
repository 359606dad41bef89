"""Reading Trinity-RFT's log files after a run: what failed, whatever the stage said.

Trinity's `trinity run` exits 0 even when its explorer or trainer failed (it logs the error and
returns), and an actor can log an error while the stage it belongs to still returns. So the
launcher reads the logs Trinity's actors write (`<checkpoint_job_dir>/log/<actor>.log`), in
Trinity's format

    ERROR 12-01 21:00:00 [launcher.py:123] Explorer failed:
    ERROR 12-01 21:00:00 [launcher.py:123] Traceback (most recent call last): ...

(its formatter repeats the prefix on every line of a multi-line record), and counts every ERROR or
CRITICAL record as a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Trinity's trinity.utils.log format: "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
RECORD_LINE = re.compile(r"^(?P<level>[A-Z]+) (?P<time>\d\d-\d\d \d\d:\d\d:\d\d) \[(?P<source>[^\]]+)\] ?(?P<message>.*)$")
FAILURE_LEVELS = ("ERROR", "CRITICAL")


@dataclass(frozen=True)
class LogRecord:
    """One ERROR/CRITICAL record: the file it is in, its source location and its lines."""

    file: str
    level: str
    source: str
    lines: tuple[str, ...]

    @property
    def headline(self) -> str:
        return self.lines[0] if self.lines else ""


@dataclass(frozen=True)
class TrinityLogReport:
    log_dir: Path
    files: tuple[str, ...]
    failures: tuple[LogRecord, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self, limit: int = 3) -> str:
        """A few lines for the terminal: how many failures, the first ones, where the logs are."""
        if self.ok:
            return f"Trinity's logs ({len(self.files)} files in {self.log_dir}) hold no errors"
        shown = [f"  {r.file} [{r.source}] {r.headline}" for r in self.failures[:limit]]
        more = len(self.failures) - len(shown)
        tail = [f"  ... and {more} more"] if more > 0 else []
        return "\n".join(
            [f"Trinity's logs hold {len(self.failures)} error record(s) (in {self.log_dir}):", *shown, *tail]
        )


def read_trinity_logs(log_dir: str | Path) -> TrinityLogReport:
    """Every ERROR/CRITICAL record in the `*.log` files of `log_dir` (and its per-node subfolders)."""
    root = Path(log_dir)
    files = sorted(p for p in root.rglob("*.log") if p.is_file()) if root.is_dir() else []
    failures: list[LogRecord] = []
    for path in files:
        failures.extend(failure_records(path.read_text(encoding="utf-8", errors="replace"), str(path.relative_to(root))))
    return TrinityLogReport(log_dir=root, files=tuple(str(p.relative_to(root)) for p in files), failures=tuple(failures))


def failure_records(text: str, file: str = "") -> list[LogRecord]:
    """ERROR/CRITICAL records of one log's text; consecutive lines with one prefix are one record."""
    records: list[LogRecord] = []
    current: tuple[str, str, str] | None = None  # (level, time, source) of the record being read
    lines: list[str] = []

    def close() -> None:
        if current is not None and current[0] in FAILURE_LEVELS:
            records.append(LogRecord(file, current[0], current[2], tuple(lines)))

    for raw in text.splitlines():
        match = RECORD_LINE.match(raw.rstrip("\r"))
        if match is None:  # not Trinity's format (a print, a library's own line): ends the record
            close()
            current, lines = None, []
            continue
        key = (match["level"], match["time"], match["source"])
        if key != current:
            close()
            current, lines = key, []
        lines.append(match["message"])
    close()
    return records
