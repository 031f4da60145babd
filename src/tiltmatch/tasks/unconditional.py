"""Prompt-free reward tilting: unconditional generation scored by the user's rewards.

The classic reward fine-tuning setting for discrete diffusion models trained without
prompts (MDLM on OpenWebText: docs/families.md): every example has the empty prompt, so
the model generates whole sequences from all masks, and DTM tilts the model's
unconditional distribution ``p_0(x)`` toward ``p_0(x) exp(beta r(x))`` (METHOD.md section 2
with no ``c``). The reward is anything :func:`tiltmatch.rewards.make_reward` takes: a
sequence-classification reward model folder (a sentiment or toxicity classifier with one
output), a ``file.py:function`` in TRL's signature, or several with weights. The examples
differ only by name (``uid``), which is what groups a prompt's completions: ``samples``
training prompts of ``num_generations`` completions each.

Options: ``rewards`` (required), ``reward_weights``, ``reward_device``, ``samples`` (how
many training "prompts"), ``eval_samples``, ``response_length`` (the sequence length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tiltmatch.rewards import PROMPT_KEY, make_reward
from tiltmatch.tasks.base import Example
from tiltmatch.tasks.dataset import DatasetTask


class UnconditionalTask(DatasetTask):
    """Empty prompts, the user's rewards (a :class:`DatasetTask` without a dataset)."""

    name = "unconditional"

    def __init__(
        self,
        rewards: Any = None,
        reward_weights: Sequence[float] | None = None,
        reward_device: str = "cpu",
        samples: int = 1024,
        eval_samples: int = 64,
        response_length: int = 64,
    ) -> None:
        if rewards is None or (isinstance(rewards, list | tuple) and not rewards):
            raise ValueError(
                "the unconditional task needs at least one reward (task_options.rewards: a "
                "reward model folder or a file.py:function)"
            )
        if samples < 1 or eval_samples < 1:
            raise ValueError("options 'samples' and 'eval_samples' must be at least 1")
        if response_length < 1:
            raise ValueError("option 'response_length' must be at least 1")
        self.train_label, self.eval_label = "unconditional", "unconditional-eval"
        self.train_hub_name = self.eval_hub_name = None  # no dataset: nothing on the hub to name
        self.train_examples = self._empty(self.train_label, samples)
        self.eval_examples = self._empty(self.eval_label, eval_samples)
        self.response_length = int(response_length)
        self.alphabet = None  # type: ignore[misc]  # the model brings its tokenizer
        self.reward_fn = make_reward(rewards, reward_weights, reward_device)

    @staticmethod
    def _empty(label: str, n: int) -> list[Example]:
        return [Example(prompt="", data={PROMPT_KEY: ""}, uid=f"{label}:{i}") for i in range(n)]
