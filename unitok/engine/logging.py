"""Metrics to stdout, a JSON-lines file and optionally TensorBoard (rank 0 only)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append ``{"step": ..., **metrics}`` rows to ``metrics.jsonl``; print a compact line; optional TensorBoard.

    Args:
        run_dir: the run directory (None: stdout only).
        enabled: False on non-main ranks.
        tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package).
    """

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        if enabled and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if enabled and tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("logging.tensorboard=true needs the `tensorboard` package installed") from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._start = time.time()

    def log(self, step: int, metrics: dict[str, Any], echo: bool = True) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self._start, 3), **metrics}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if echo:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                              if not k.startswith("weight/"))  # fmt: skip
            print(f"step {step:>7d}  {shown}", flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
