"""Run logging: console lines, a JSON-lines metrics file, and the experiment trackers.

``report_to`` (TRL's name) chooses the trackers the per-update scalars and the
per-stage records go to, all of them alike: ``tensorboard`` (``<out>/tensorboard``),
``wandb`` and ``trackio`` (optional extras: ``pip install 'tiltmatch[trackers]'``;
their offline modes work without network: ``WANDB_MODE=offline``, trackio's local
store under ``$TRACKIO_DIR``), or ``none``. The console and ``stages.jsonl`` are
always written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

#: the trackers ``report_to`` may name
TRACKERS = ("tensorboard", "wandb", "trackio")


class TrackerError(ValueError):
    """A ``report_to`` entry that is unknown or whose package is not installed."""


def parse_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard,wandb"``, ``["wandb"]``, ``"none"``, ``"all"`` -> a checked list."""
    if report_to is None:
        return []
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return list(TRACKERS)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(
            f"unknown report_to {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(TRACKERS)}, all or none"
        )
    return list(dict.fromkeys(names))


def _finite_scalars(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class RunLog:
    """Writes per-update scalars and per-stage records of a run to every chosen tracker."""

    def __init__(
        self,
        folder: Path,
        tensorboard: bool = True,
        quiet: bool = False,
        report_to: str | Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        #: per-update records are written every this many updates (``train.logging_steps``)
        every = ((config or {}).get("train") or {}).get("logging_steps", 1)
        self.logging_steps = every if isinstance(every, int) and every >= 1 else 1
        chosen = parse_report_to(report_to if report_to is not None else "tensorboard")
        if not tensorboard and "tensorboard" in chosen:
            chosen.remove("tensorboard")
        self.trackers = chosen
        self.writer = None
        self._wandb: Any = None
        self._trackio: Any = None
        if "tensorboard" in chosen:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if it is absent
                self.writer = None
        project = os.environ.get("TILTMATCH_PROJECT", "tiltmatch")
        if "wandb" in chosen:
            wandb = _import_tracker("wandb")
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", project),
                name=folder.name,
                dir=str(folder),
                config=config,
                reinit="finish_previous",
            )
        if "trackio" in chosen:
            trackio = _import_tracker("trackio")
            self._trackio = trackio.init(
                project=project, name=folder.name, config=config, embed=False
            )

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """Scalars ``prefix/name`` at ``step`` (TensorBoard; wandb/trackio at the update count);
        per-update ones (``prefix`` update) every ``train.logging_steps`` updates only."""
        if prefix == "update" and step % self.logging_steps:
            return
        scalars = _finite_scalars(values)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        if prefix == "update":
            self._log_trackers({f"update/{k}": v for k, v in scalars.items()}, step)

    def _log_trackers(self, data: dict[str, float], step: int) -> None:
        if self._wandb is not None:
            self._wandb.log(data, step=step)
        if self._trackio is not None:
            self._trackio.log(data, step=step)

    def stage(self, record: dict[str, Any]) -> None:
        """A stage summary: console line, ``stages.jsonl`` and every tracker."""
        with (self.folder / "stages.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in _finite_scalars(record).items():
                self.writer.add_scalar(f"stage/{k}", v, int(record.get("stage", 0)))
        # wandb and trackio want one increasing step: the stage ends at its last update.
        step = int(record.get("updates", record.get("stage", 0)))
        self._log_trackers({f"stage/{k}": v for k, v in _finite_scalars(record).items()}, step)
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
        """Flush and close every tracker."""
        if self.writer is not None:
            self.writer.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._trackio is not None:
            self._trackio.finish()
            self._trackio = None


def _import_tracker(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise TrackerError(
            f"report_to {name!r} needs the {name} package: pip install 'tiltmatch[trackers]' "
            f"(or pip install {name}), or choose another tracker"
        ) from None
