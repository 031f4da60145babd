"""Masked-diffusion training (pretraining / SFT) of a base denoiser on task demonstrations.

Forward masking of the response only, ``t ~ U(0, 1]`` antithetic, ``1/t``
weighting, loss over masked response tokens: this is the c-DTM loss with
``c = 0`` and unit weights (METHOD.md section 4 at ``h = 0``), so it reuses
:func:`tiltmatch.dtm.loss.dtm_loss`. The result is the base model ``p_0`` of a
synthetic task.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.states import States, block_states, random_mask_states
from tiltmatch.examples import Example
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, save_denoiser, tiny_denoiser
from tiltmatch.preflight import (
    Heartbeat,
    ModelShape,
    check_positions,
    model_need,
    probe_examples,
    refuse_over,
    rows_need,
    update_need,
)
from tiltmatch.sampling.sampler import left_pad
from tiltmatch.tasks.base import Task


@dataclass(frozen=True)
class PretrainConfig:
    """Masked-diffusion SFT settings."""

    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 1e-3
    final_learning_rate: float = 5e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    train_examples: int = 20_000
    seed: int = 0


def char_codec_for(task: Task) -> CharTokenizer:
    """The project's character-level tokenizer over a task's alphabet."""
    if task.alphabet is None:
        raise ValueError(f"task {task.name!r} has no character alphabet; use a model's tokenizer")
    return CharTokenizer(task.alphabet)


def preflight_pretrain(task: Task, spec: TinyModelSpec, config: PretrainConfig) -> None:
    """Refuse sizes whose memory exceeds the machine's (or whose one example takes too long
    to build), naming the ``tiltmatch pretrain`` flags they come from."""
    codec = char_codec_for(task)
    shape = ModelShape(
        codec.vocab_size,
        spec.hidden_size,
        spec.num_layers,
        spec.num_heads,
        spec.intermediate_size,
        spec.max_positions,
    )
    sizes = (
        f"--hidden-size {spec.hidden_size}, --num-layers {spec.num_layers}, "
        f"--intermediate-size {spec.intermediate_size}"
    )
    refuse_over([model_need(shape, sizes, 4.0, 4.0)])  # weights, gradient, two AdamW moments
    where = f"task {task.name}"
    probe = probe_examples(
        lambda: task.examples("train", 1, config.seed), where, config.train_examples
    )
    prompt = max((len(codec.encode_prompt(e.prompt)) for e in probe), default=0)
    check_positions(prompt, task.response_length, shape, where)
    tokens = prompt + task.response_length
    refuse_over(
        [
            model_need(shape, sizes, 4.0, 4.0),
            update_need(
                f"--batch-size {config.batch_size}",
                config.batch_size,
                tokens,
                task.response_length,
                shape,
                4.0,
            ),
            rows_need(
                "the training examples",
                f"--train-examples {config.train_examples}",
                config.train_examples,
                tokens,
            ),
        ]
    )


def pretrain(
    task: Task,
    spec: TinyModelSpec,
    config: PretrainConfig,
    out_dir: str | Path | None = None,
    quiet: bool = False,
) -> tuple[MaskedDenoiser, dict[str, float]]:
    """Train a tiny base denoiser on ``task``'s demonstrations; save it to ``out_dir`` if given.

    Demonstrations are drawn afresh for every batch from a fixed pool of
    training examples, so a prompt is seen with several of its valid answers.
    """
    codec = char_codec_for(task)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = tiny_denoiser(codec.vocab_size, spec, seed=config.seed)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    with Heartbeat(f"building {config.train_examples} {task.name} examples", quiet):
        examples = task.examples("train", config.train_examples, config.seed)
    prompts = [codec.encode_prompt(e.prompt) for e in examples]
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        denoiser.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, pretrain_lr_factor(config))
    started = time.time()
    losses: list[float] = []
    denoiser.train()
    bar = tqdm(range(config.steps), desc=f"pretrain {task.name}", disable=quiet, unit="step")
    for _ in bar:
        rows = [rng.randrange(len(examples)) for _ in range(config.batch_size)]
        x = demonstrations(task, codec, [examples[i] for i in rows], rng)
        prompt_ids, prompt_mask = left_pad([prompts[i] for i in rows], codec.pad_token_id)
        states = sft_states(denoiser, x, prompt_mask, generator)
        logits = denoiser.response_logits(prompt_ids, prompt_mask, states.z)
        loss, _ = dtm_loss(logits, x, states, torch.ones(x.shape[0]), c=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    denoiser.eval()
    summary = {
        "final_loss": sum(losses[-100:]) / max(len(losses[-100:]), 1),
        "seconds": time.time() - started,
        "steps": config.steps,
        "parameters": sum(p.numel() for p in denoiser.parameters()),
    }
    if out_dir is not None:
        save_base(out_dir, denoiser, task, codec, {**config.__dict__, **summary})
    return denoiser, summary


def pretrain_lr_factor(config: PretrainConfig) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warmup over ``warmup_steps``, then a cosine
    from 1 down to ``final_learning_rate / learning_rate`` at ``steps``."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        floor = config.final_learning_rate / config.learning_rate
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def demonstrations(
    task: Task, codec: CharTokenizer, examples: Sequence[Example], rng: random.Random
) -> torch.Tensor:
    """One demonstration of each example, encoded as a response ``[N, L]`` (drawn from
    ``rng`` in order: a prompt with several valid answers gets one of them)."""
    return torch.tensor(
        [
            codec.encode_response(task.demonstration(example, rng), task.response_length)
            for example in examples
        ]
    )


def sft_states(
    denoiser: MaskedDenoiser, x: torch.Tensor, prompt_mask: torch.Tensor, generator: torch.Generator
) -> States:
    """The masked states of one SFT batch: the c-DTM loss's random masking with ``1/t``
    weights (METHOD.md section 4 at ``h = 0``), or, for block diffusion, one active block
    given clean earlier blocks (as SDAR trains)."""
    mask_token_id = denoiser.mask_token_id
    block_size = denoiser.family.block_size
    if block_size is None:
        return random_mask_states(x, mask_token_id, generator, inverse_t_weight=True)
    return block_states(x, prompt_mask.sum(1), block_size, mask_token_id, generator)


def save_base(
    out_dir: str | Path,
    denoiser: MaskedDenoiser,
    task: Task,
    codec: CharTokenizer,
    pretrain_record: dict[str, Any],
) -> Path:
    """The pretrained base as a loadable denoiser folder, with its task, alphabet, special
    ids and how it was pretrained."""
    meta = {
        "task": task.name,
        "alphabet": codec.alphabet,
        "mask_token_id": codec.mask_token_id,
        "pad_token_id": codec.pad_token_id,
        "eos_token_id": codec.eos_token_id,
        "pretrain": pretrain_record,
    }
    return save_denoiser(out_dir, denoiser.model, meta)
