"""The DTM objective: tilt weights, states and the c-DTM loss, stage by stage.

METHOD.md sections 4-6. A stage at ``a`` with increment ``h`` trains the
student so that its unmasking posteriors become those of ``p_{a+h}``; the
teacher (the model at the start of the stage) supplies the control variate
``mu_ref`` and the rollouts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import DTMConfig
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.options import FIXED_BASELINES
from tiltmatch.dtm.schedule import (
    AdaptiveESSSchedule,
    FixedSchedule,
    GeometricSchedule,
    NoAnnealing,
    TiltSchedule,
)
from tiltmatch.dtm.states import (
    States,
    block_states,
    random_mask_states,
    sar_states,
    trajectory_states,
)
from tiltmatch.dtm.weights import (
    effective_sample_size,
    resolve_baseline,
    reward_baseline,
    rows_of_groups,
    self_normalised_weights,
    tilt_weights,
)
from tiltmatch.objective import LossInputs, Objective, Phase


def make_schedule(config: DTMConfig) -> TiltSchedule:
    """The annealing schedule a DTM config asks for."""
    if config.schedule == "fixed":
        return FixedSchedule(config.h, config.a_end)
    if config.schedule == "geometric":
        return GeometricSchedule(config.h, config.geometric_ratio, config.a_end)
    if config.schedule == "adaptive":
        return AdaptiveESSSchedule(config.rho, config.h_max, config.a_end)
    return NoAnnealing(config.a_end)


class DTMObjective(Objective):
    """Discrete Tilt Matching with the control-variate target (c-DTM)."""

    name = "dtm"

    def __init__(self, config: DTMConfig, mask_token_id: int) -> None:
        self.config = config
        self.mask_token_id = mask_token_id
        self.schedule = make_schedule(config)
        # Trajectory states are read from the sampler's own path (section 6).
        self.records_trajectories = config.states == "trajectory"

    def prepare(
        self,
        phase: Phase,
        reward_lower_bound: float | None,
        calibration: Callable[[], torch.Tensor],
    ) -> dict[str, float]:
        """Fix the reward baseline before any rollout it weights is drawn (METHOD.md section 5).

        ``bound``: the declared lower bound (``dtm.reward_lower_bound`` times
        ``train.reward_scale`` is passed in by the trainer, or the reward's own); ``calibrated``:
        the lowest reward of ``calibration()``, a sample of the base model drawn with its own
        generator, so ``b`` is independent of every training rollout. ``auto`` is the first
        when a bound is declared, else the second.
        """
        kind = resolve_baseline(self.config.baseline, reward_lower_bound)
        phase.extra["baseline"] = kind
        if kind not in FIXED_BASELINES:
            return {}
        if kind == "bound":
            if reward_lower_bound is None:
                raise ValueError(
                    "dtm.baseline=bound needs a lower bound of the reward: set "
                    "dtm.reward_lower_bound (this reward declares none)"
                )
            value = float(reward_lower_bound)
        else:
            value = float(calibration().min())
        phase.extra["reward_baseline"] = value
        return {"reward_baseline": value}

    def steps_in_stage(self) -> int:
        """``steps_per_h`` optimiser updates per tilt increment."""
        return self.config.steps_per_h

    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Choose ``h`` from the stage's rollout rewards and report the resulting ESS.

        ``below_baseline``: the fraction of rollouts whose reward is below the fixed baseline
        (their weight is below 1; with ``c = 1`` the clamp may fire on them, section 5).
        """
        phase.h = self.schedule.next_h(phase.a, rewards, phase.stage)
        w = self.sample_weights(*rows_of_groups(rewards), phase.h, phase).view_as(rewards)
        stats = {
            "a": phase.a,
            "h": phase.h,
            "ess": float(effective_sample_size(w).mean()) if w.shape[1] > 1 else 1.0,
        }
        if "reward_baseline" in phase.extra:
            stats["reward_baseline"] = phase.extra["reward_baseline"]
            below = rewards < phase.extra["reward_baseline"]
            stats["below_baseline"] = float(below.float().mean())
        return stats

    def end_stage(self, phase: Phase) -> None:
        """Move along the annealing path: ``a <- a + h``."""
        phase.a += phase.h

    def finished(self, phase: Phase) -> bool:
        """Done when ``a`` has reached ``a_end``."""
        return self.schedule.done(phase.a)

    def sample_weights(
        self,
        rewards: torch.Tensor,
        group_rewards: torch.Tensor,
        h: float,
        phase: Phase | None = None,
    ) -> torch.Tensor:
        """Per-row weights ``w_h`` ``[N]`` of rewards ``[N]`` whose whole groups are
        ``group_rewards`` ``[N, G]`` (section 5 variants; a fixed baseline is read from
        ``phase``, where :meth:`prepare` put it)."""
        cfg = self.config
        if cfg.self_normalise:
            return self_normalised_weights(rewards, group_rewards, h)
        extra = phase.extra if phase is not None else {}
        kind = extra.get("baseline", resolve_baseline(cfg.baseline, None))
        b = reward_baseline(rewards, group_rewards, kind, extra.get("reward_baseline"))
        if cfg.first_order:
            return 1.0 + h * (rewards - b)
        w = tilt_weights(rewards, h, b)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                f"tilt weights exp(h (r - b)) overflow at h = {h:g}: use a smaller h, the "
                "adaptive schedule, a smaller train.reward_scale, or a baseline nearer the "
                "rewards (dtm.baseline / dtm.reward_lower_bound)"
            )
        return w

    def states(self, batch: RolloutBatch, generator: torch.Generator) -> States:
        """The masked states the loss covers for this batch (section 6)."""
        cfg = self.config
        if cfg.states == "block":
            raise ValueError("dtm.states=block needs the model's blocks: see block_states_of")
        if cfg.states == "random":
            return random_mask_states(
                batch.responses, self.mask_token_id, generator, cfg.inverse_t_weight
            )
        if cfg.states == "sar":
            return sar_states(batch.responses, self.mask_token_id, cfg.sar_block_length, generator)
        if batch.visited is None:
            raise ValueError("trajectory states need rollouts recorded with their visited states")
        return trajectory_states(batch.responses, batch.visited, self.mask_token_id, generator)

    def block_states_of(
        self, batch: RolloutBatch, generator: torch.Generator, block_size: int | None
    ) -> States:
        """Block diffusion states in the denoiser's own blocks (docs/families.md)."""
        if block_size is None:
            raise ValueError("dtm.states=block needs a block diffusion model")
        lengths = batch.prompt_mask.sum(1)
        return block_states(batch.responses, lengths, block_size, self.mask_token_id, generator)

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The c-DTM loss of one micro-batch."""
        batch = inputs.batch
        # Each row's weight from its whole group, also in a micro-batch of single completions.
        w = self.sample_weights(batch.rewards, batch.group_rewards(), inputs.phase.h, inputs.phase)
        if self.config.states == "block":
            block = inputs.student.family.block_size
            states = self.block_states_of(batch, inputs.generator, block)
        else:
            states = self.states(batch, inputs.generator)
        # The vocabulary projection only at the positions the loss covers, for student and
        # teacher (METHOD.md section 6): [N, V] instead of [B, L, V].
        at = states.loss_mask
        student_logits = inputs.student.response_logits(
            batch.prompt_ids, batch.prompt_mask, states.z, logits_at=at
        )
        teacher_logits = None
        if self.config.c != 0.0:
            with torch.no_grad():
                teacher_logits = inputs.teacher.response_logits(
                    batch.prompt_ids, batch.prompt_mask, states.z, logits_at=at
                )
        loss, stats = dtm_loss(
            student_logits, batch.responses, states, w, self.config.c, teacher_logits
        )
        return loss, {"clamp_rate": stats.clamp_rate, "weight_max": float(w.max())}
