"""Run logging: console lines, a JSON-lines metrics file and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLog:
    """Writes per-update scalars and per-stage records of a run."""

    def __init__(self, folder: Path, tensorboard: bool = True, quiet: bool = False) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if it is absent
                self.writer = None

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/name`` at ``step``."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(float(v)):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def stage(self, record: dict[str, Any]) -> None:
        """A stage summary: console line, ``stages.jsonl`` and TensorBoard."""
        with (self.folder / "stages.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.scalars("stage", record, int(record.get("stage", 0)))
        if not self.quiet:
            keys = (
                "stage",
                "a",
                "h",
                "ess",
                "reward_mean",
                "reward_std",
                "loss",
                "grad_norm",
                "clamp_rate",
                "eval_reward",
                "wall_seconds",
            )
            parts = []
            for k in keys:
                if k in record:
                    v = record[k]
                    parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
            tqdm.write("  ".join(parts))

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()
