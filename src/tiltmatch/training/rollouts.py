"""Rollouts and the replay buffer (METHOD.md section 6).

Sampling is the expensive part of DTM, so rollouts from the stage's teacher are
kept in a buffer of ``P`` prompts x ``G`` completions, partly refreshed every
few updates and rebuilt at each phase boundary. Prompts come from a fixed,
seeded pool of training examples, visited in shuffled passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.rewards import RewardFunction, task_reward_function
from tiltmatch.sampling.config import ROLLOUT_ROWS, rows_per_call
from tiltmatch.sampling.sampler import SamplingConfig, generate, left_pad
from tiltmatch.tasks.base import Example, Task


class RolloutWorker:
    """Turns examples into scored completions with a given denoiser."""

    def __init__(
        self,
        task: Task,
        codec: PromptCodec,
        response_length: int,
        sampling: SamplingConfig,
        record_states: bool = False,
        chunk_size: int = ROLLOUT_ROWS,
        reward: RewardFunction | None = None,
    ) -> None:
        self.task, self.codec = task, codec
        #: the rewards stage that scores this worker's rollouts (default: the task's own)
        self.reward = reward if reward is not None else task_reward_function(task)
        self.response_length = response_length
        self.sampling = sampling
        self.record_states = record_states
        self.chunk_size = chunk_size
        specials = {codec.pad_token_id} - {codec.eos_token_id}
        self.forbidden = sorted(specials)

    def sample(
        self,
        denoiser: MaskedDenoiser,
        prompts: Sequence[Sequence[int]],
        generator: torch.Generator,
        temperature: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Responses ``[N, L]`` (and visited canvases) for ``prompts``, in chunks of the
        sampler's ``batch_rows`` (unset: ``chunk_size``)."""
        config = self.sampling
        if temperature is not None:  # every other field kept (mode, cache, threshold, ...)
            config = config.model_copy(update={"temperature": temperature})
        rows = rows_per_call(config, self.chunk_size)
        outs, visits = [], []
        for lo in range(0, len(prompts), rows):
            out = generate(
                denoiser,
                prompts[lo : lo + rows],
                self.response_length,
                config,
                generator,
                record_states=self.record_states,
                forbidden_token_ids=self.forbidden,
                eos_token_id=self.codec.eos_token_id,
            )
            outs.append(out.responses)
            if out.visited is not None:
                visits.append(out.visited)
        visited = torch.cat(visits, dim=1) if visits else None
        return torch.cat(outs), visited

    def decode(self, responses: torch.Tensor) -> list[str]:
        """Decoded response texts."""
        return [self.codec.decode_response(row.tolist()) for row in responses]

    def score(self, responses: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
        """Rewards ``[N]`` of responses to their examples: one call of the task's batched
        reward (:mod:`tiltmatch.rewards`), checked to be finite numbers."""
        return self.reward(self.decode(responses), examples)

    def rollout(
        self,
        denoiser: MaskedDenoiser,
        examples: Sequence[Example],
        group_size: int,
        generator: torch.Generator,
    ) -> RolloutBatch:
        """``group_size`` scored completions of each example."""
        repeated = [e for e in examples for _ in range(group_size)]
        prompts = [self.codec.encode_prompt(e.prompt) for e in repeated]
        responses, visited = self.sample(denoiser, prompts, generator)
        rewards = self.score(responses, repeated)
        prompt_ids, prompt_mask = left_pad(prompts, self.codec.pad_token_id, responses.device)
        return RolloutBatch(prompt_ids, prompt_mask, responses, rewards, group_size, visited)


class PromptPool:
    """A fixed pool of training examples, visited in seeded shuffled passes."""

    def __init__(self, examples: Sequence[Example], seed: int) -> None:
        if not examples:
            raise ValueError("the training prompt pool is empty")
        self.examples = list(examples)
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """Indices of the next ``k`` examples."""
        out = []
        for _ in range(k):
            if self.cursor == len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation()
            out.append(self._order[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        """Position in the pool, for checkpoints."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position written by :meth:`state_dict`."""
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()


class ReplayBuffer:
    """``P`` prompts x ``G`` completions from the teacher, with per-slot ages."""

    def __init__(
        self, pool: PromptPool, num_prompts: int, group_size: int, pad_token_id: int
    ) -> None:
        self.pool = pool
        self.pad_token_id = pad_token_id
        self.num_prompts = num_prompts
        self.group_size = group_size
        self.slots: list[int] = []  # example index per slot
        self.ages: list[int] = []
        self.data: RolloutBatch | None = None

    def rebuild(self, fill: Callable[[list[Example]], RolloutBatch]) -> int:
        """Replace every slot with fresh prompts; returns the number of rollouts made."""
        self.slots = self.pool.take(self.num_prompts)
        self.ages = [0] * self.num_prompts
        self.data = fill([self.pool.examples[i] for i in self.slots])
        return self.num_prompts * self.group_size

    def refresh(self, count: int, fill: Callable[[list[Example]], RolloutBatch]) -> int:
        """Replace the ``count`` oldest slots; returns the number of rollouts made."""
        if count == 0 or self.data is None:
            return 0
        oldest = sorted(range(len(self.slots)), key=lambda s: -self.ages[s])[:count]
        oldest.sort()
        new_idx = self.pool.take(count)
        fresh = fill([self.pool.examples[i] for i in new_idx])
        self.ages = [a + 1 for a in self.ages]
        rows = self._rows(oldest)
        fresh_rows = torch.arange(len(oldest) * self.group_size, device=rows.device)
        self.data = _replace_rows(self.data, rows, fresh, fresh_rows, self.pad_token_id)
        for s, i in zip(oldest, new_idx, strict=True):
            self.slots[s], self.ages[s] = i, 0
        return count * self.group_size

    def _rows(self, slots: Sequence[int]) -> torch.Tensor:
        g = self.group_size
        device = self.data.responses.device if self.data is not None else None
        rows = [s * g + j for s in slots for j in range(g)]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def sample(self, num_prompts: int, generator: torch.Generator) -> RolloutBatch:
        """A batch of ``num_prompts`` whole groups, drawn without replacement."""
        if self.data is None:
            raise RuntimeError("the replay buffer is empty: rebuild it first")
        order = torch.randperm(len(self.slots), generator=generator, device=generator.device)
        slots = order[:num_prompts].tolist()
        return _select_rows(self.data, self._rows(slots))

    def sample_completions(
        self, per_batch: int, batches: int, generator: torch.Generator
    ) -> list[RolloutBatch]:
        """``batches`` micro-batches of ``per_batch`` single completions for one update.

        METHOD.md section 6 (the published recipes): the ``per_batch x batches``
        completions of one accumulation window are drawn without replacement from
        all ``P x G`` rows of the buffer, so a prompt's group may be split across
        micro-batches. Each row carries its whole group's rewards
        (:attr:`RolloutBatch.split_groups`), so a baseline computed per group sees all
        ``G`` of them, as it does on whole groups (section 5).
        """
        if self.data is None:
            raise RuntimeError("the replay buffer is empty: rebuild it first")
        held = self.data.responses.shape[0]
        if per_batch * batches > held:
            raise ValueError(
                f"{batches} micro-batches of {per_batch} completions need {per_batch * batches} "
                f"distinct rows, the buffer holds {held}"
            )
        order = torch.randperm(held, generator=generator, device=generator.device)
        order = order.to(self.data.responses.device)
        out = []
        groups = self.data.grouped_rewards
        for k in range(batches):
            rows = order[k * per_batch : (k + 1) * per_batch]
            picked = _select_rows(self.data, rows)
            picked.split_groups = groups[rows // self.group_size]
            out.append(picked)
        return out

    def state_dict(self) -> dict:
        """Everything needed to restore the buffer exactly."""
        if self.data is None:
            return {"slots": [], "ages": [], "pool": self.pool.state_dict()}
        d = self.data
        state = {
            "slots": list(self.slots),
            "ages": list(self.ages),
            "pool": self.pool.state_dict(),
            "prompt_ids": d.prompt_ids,
            "prompt_mask": d.prompt_mask,
            "responses": d.responses,
            "rewards": d.rewards,
        }
        if d.visited is not None:
            state["visited"] = d.visited
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` wrote."""
        self.pool.load_state_dict(state["pool"])
        self.slots, self.ages = list(state["slots"]), list(state["ages"])
        if not self.slots:
            self.data = None
            return
        self.data = RolloutBatch(
            state["prompt_ids"],
            state["prompt_mask"],
            state["responses"],
            state["rewards"],
            self.group_size,
            state.get("visited"),
        )


def _pad_left_to(ids: torch.Tensor, mask: torch.Tensor, width: int, pad: int):
    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, mask
    ids = torch.cat(
        [torch.full((ids.shape[0], extra), pad, dtype=ids.dtype, device=ids.device), ids], 1
    )
    mask = torch.cat(
        [torch.zeros((mask.shape[0], extra), dtype=mask.dtype, device=mask.device), mask], 1
    )
    return ids, mask


def _select_rows(data: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    ids, mask = data.prompt_ids[rows], data.prompt_mask[rows]
    keep = int(mask.sum(1).max())  # drop columns that are padding in every selected row
    ids, mask = ids[:, ids.shape[1] - keep :], mask[:, mask.shape[1] - keep :]
    return RolloutBatch(
        ids,
        mask,
        data.responses[rows],
        data.rewards[rows],
        data.group_size,
        data.visited[:, rows] if data.visited is not None else None,
        data.split_groups[rows] if data.split_groups is not None else None,
    )


def _replace_rows(
    data: RolloutBatch,
    rows: torch.Tensor,
    fresh: RolloutBatch,
    fresh_rows: torch.Tensor,
    pad: int,
) -> RolloutBatch:
    width = max(data.prompt_ids.shape[1], fresh.prompt_ids.shape[1])
    ids, mask = _pad_left_to(data.prompt_ids, data.prompt_mask, width, pad)
    fids, fmask = _pad_left_to(fresh.prompt_ids, fresh.prompt_mask, width, pad)
    ids, mask = ids.clone(), mask.clone()
    ids[rows], mask[rows] = fids[fresh_rows], fmask[fresh_rows]
    responses, rewards = data.responses.clone(), data.rewards.clone()
    responses[rows], rewards[rows] = fresh.responses[fresh_rows], fresh.rewards[fresh_rows]
    visited = None
    if data.visited is not None and fresh.visited is not None:
        visited = data.visited.clone()
        visited[:, rows] = fresh.visited[:, fresh_rows]
    return RolloutBatch(ids, mask, responses, rewards, data.group_size, visited)
