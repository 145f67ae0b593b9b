"""Logging for training runs: rank 0 writes to the console and ``train.log``; other ranks warn only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Console output that does not break a running tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # fall back to a plain write
            super().emit(record)


def setup_logging(run_dir: str | Path | None, rank: int = 0, use_tqdm: bool = False,
                  level: int = logging.INFO) -> None:
    """Configure the root logger of this process (replacing earlier handlers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] {_FORMAT}", "%Y-%m-%d %H:%M:%S")
    console: logging.Handler = _TqdmHandler() if use_tqdm and rank == 0 else logging.StreamHandler(
        sys.stdout if rank == 0 else sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(level if rank == 0 else logging.WARNING)
    root.addHandler(console)
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(run_dir) / "train.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.setLevel(level)


def to_log_file(line: str, level: int = logging.ERROR) -> None:
    """Write ``line`` to the run's ``train.log`` only, not to the console that already shows it: the ``[Error]``
    line that ends a run at start-up (before any log line was written) or after an interrupt, so the run
    directory says why the run stopped. Nothing where this process has no log file (ranks other than 0)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("train", level, __file__, 0, line, None, None))
