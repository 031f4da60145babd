"""Held-out evaluation: sample responses and summarise them with the task's metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.tasks.base import Example
from tiltmatch.training.rollouts import RolloutWorker

#: ``sample(examples, seed)``: the sampled texts of each example (one list per example)
SampleTexts = Callable[[Sequence[Example], int], list[list[str]]]
#: ``spread(examples, sample, seed)``: the texts of every example, ``sample`` drawing each
#: process's share (:meth:`~tiltmatch.training.parallel.Parallelism.sample_shares`)
Spread = Callable[[Sequence[Example], SampleTexts, int], list[list[str]]]


def sample_texts(
    worker: RolloutWorker,
    denoiser: MaskedDenoiser,
    examples: Sequence[Example],
    samples_per_example: int,
    temperature: float,
    seed: int,
) -> list[list[str]]:
    """``samples_per_example`` decoded responses per example, from a private generator.

    The generator is seeded here, so evaluation never perturbs the training RNG
    and a resumed run evaluates exactly as an uninterrupted one.
    """
    device = next(denoiser.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompts = [worker.codec.encode_prompt(e.prompt) for e in examples]
    repeated = [p for p in prompts for _ in range(samples_per_example)]
    responses, _ = worker.sample(denoiser, repeated, generator, temperature=temperature)
    texts = worker.decode(responses)
    k = samples_per_example
    return [texts[i * k : (i + 1) * k] for i in range(len(examples))]


def evaluate(
    worker: RolloutWorker,
    denoiser: MaskedDenoiser,
    examples: Sequence[Example],
    samples_per_example: int,
    temperature: float,
    seed: int,
    spread: Spread | None = None,
) -> dict[str, float]:
    """The task's metrics over ``samples_per_example`` samples of each example.

    ``spread``: how the sampling is shared out over processes
    (:meth:`~tiltmatch.training.parallel.Parallelism.sample_shares`, collective);
    by default every example is sampled here.
    """

    def sample(share: Sequence[Example], share_seed: int) -> list[list[str]]:
        return sample_texts(worker, denoiser, share, samples_per_example, temperature, share_seed)

    texts = sample(examples, seed) if spread is None else spread(examples, sample, seed)
    flat_texts = [t for group in texts for t in group]
    flat_examples = [e for e in examples for _ in range(samples_per_example)]
    return worker.task.metrics(flat_texts, flat_examples)
