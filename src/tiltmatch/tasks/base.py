"""The task plugin interface: prompts, rewards, a dataset source and a metric.

A task knows nothing of models or tokens. It makes :class:`Example` objects
(prompt text plus whatever the reward needs), scores a decoded response with a
reward in ``[0, 1]`` (METHOD.md section 1), and summarises a batch of responses
with its evaluation metrics. Synthetic tasks can also write a demonstration for
an example, which is what their base models are trained on (masked-diffusion SFT).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from tiltmatch.examples import Example, RewardError, reward_number

__all__ = ["Example", "RewardError", "Task"]


class Task(ABC):
    """A task plugin. Subclasses set ``name`` and implement the abstract methods.

    ``alphabet`` is set by tasks that run with the project's character-level
    tokenizer; ``response_length`` is the fixed response length (tokens) the
    task's answers fit in.
    """

    name: ClassVar[str]
    alphabet: ClassVar[str | None] = None
    response_length: int = 32

    @abstractmethod
    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The examples of ``split`` ("train", "test", or a task-specific source), at most ``n``."""

    @abstractmethod
    def reward(self, response: str, example: Example) -> float:
        """Reward of a decoded response, in [0, 1]."""

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """A demonstration response for SFT of a base model (synthetic tasks only)."""
        raise NotImplementedError(f"task {self.name!r} has no demonstration generator")

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Evaluation metrics of responses to examples; by default mean reward and accuracy."""
        rewards = [self.checked_reward(r, e) for r, e in zip(responses, examples, strict=True)]
        n = max(len(rewards), 1)
        return {
            "reward": sum(rewards) / n,
            "accuracy": sum(r >= 1.0 for r in rewards) / n,
        }

    def checked_reward(self, response: str, example: Example) -> float:
        """:meth:`reward`; any failure becomes a :class:`RewardError` naming the example."""
        try:
            value = self.reward(response, example)
        except Exception as err:  # a user's reward may raise anything; say which call failed
            raise RewardError(
                f"reward of task {self.name!r} raised {type(err).__name__}: {err} "
                f"(example {example.uid!r}, response {response!r})"
            ) from err
        where = f" (example {example.uid!r}, response {response!r})"
        return reward_number(value, f"reward of task {self.name!r}", where, bounds=(0.0, 1.0))
