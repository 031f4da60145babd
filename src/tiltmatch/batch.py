"""What one batch of rollouts is: the prompts, the responses, their rewards, grouped by prompt.

A leaf of the package (it imports torch only): the sampler's rollouts produce it, the replay
buffer holds and slices it (:mod:`tiltmatch.training.rollouts`), and every objective's loss
reads it (:mod:`tiltmatch.objective`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """``N = P' x G`` completions of ``P'`` prompts, rows grouped prompt by prompt.

    ``prompt_ids``/``prompt_mask``: ``[N, T]`` left-padded prompts; ``responses``:
    ``[N, L]``; ``rewards``: ``[N]``; ``group_size``: ``G``; ``visited``: the
    sampler's canvases ``[S, N, L]`` when recorded.

    A micro-batch of single completions (``train.micro_batch: completions``) holds rows of
    many groups, not whole ones: it carries each row's whole group of rewards in
    ``split_groups`` (``[N, G]``), so a per-group statistic is never computed on the rows
    that happen to share the micro-batch (METHOD.md section 5).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    responses: torch.Tensor
    rewards: torch.Tensor
    group_size: int
    visited: torch.Tensor | None = None
    split_groups: torch.Tensor | None = None

    @property
    def grouped_rewards(self) -> torch.Tensor:
        """Rewards as ``[P', G]``: the rows must be whole groups, prompt by prompt."""
        if self.split_groups is not None:
            raise ValueError(
                "this batch holds single completions of split groups, not whole groups: "
                "read each row's group from group_rewards()"
            )
        return self.rewards.view(-1, self.group_size)

    def group_rewards(self) -> torch.Tensor:
        """The rewards of each row's whole group, ``[N, G]`` (the row's own among them)."""
        if self.split_groups is not None:
            return self.split_groups
        return self.grouped_rewards.repeat_interleave(self.group_size, dim=0)
