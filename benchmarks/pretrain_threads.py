"""Is base pretraining bit-reproducible across thread counts? One SFT step at 1 and 2 threads.

    python benchmarks/pretrain_threads.py sudoku

Builds the recipe's model (:data:`tiltmatch.experiments.base_models.RECIPES`) with the
same seed twice, takes one masked-diffusion SFT step on the same batch at 1 and then 2
intra-op threads, and compares the gradients bit for bit. A difference in one step
compounds over a few hundred: such bases must be shipped, not rebuilt (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import random
import sys

import torch

from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.states import random_mask_states
from tiltmatch.experiments.base_models import RECIPES
from tiltmatch.models.denoiser import MaskedDenoiser, tiny_denoiser
from tiltmatch.sampling.sampler import left_pad
from tiltmatch.tasks import get_task
from tiltmatch.training.pretrain import char_codec_for


def gradient_digest(name: str, threads: int) -> tuple[float, str]:
    """(loss, SHA-256 prefix of every gradient) of one SFT step at ``threads`` threads."""
    torch.set_num_threads(threads)
    recipe = RECIPES[name]
    task = get_task(recipe.task, **recipe.task_options)
    codec = char_codec_for(task)
    rng = random.Random(0)
    model = tiny_denoiser(codec.vocab_size, recipe.spec, seed=0)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    examples = task.examples("train", 64, 0)
    x = torch.tensor(
        [codec.encode_response(task.demonstration(e, rng), task.response_length) for e in examples]
    )
    ids, mask = left_pad([codec.encode_prompt(e.prompt) for e in examples], codec.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    states = random_mask_states(x, codec.mask_token_id, gen, inverse_t_weight=True)
    ids = torch.cat([ids, states.z], 1)
    logits = denoiser(ids, torch.cat([mask, torch.ones_like(x)], 1), x.shape[1])
    loss, _ = dtm_loss(logits, x, states, torch.ones(x.shape[0]), c=0.0)
    loss.backward()
    digest = hashlib.sha256()
    for p in denoiser.parameters():
        assert p.grad is not None
        digest.update(p.grad.numpy().tobytes())
    return float(loss.detach()), digest.hexdigest()[:16]


def main(argv: list[str]) -> int:
    """Print both digests and whether they are equal."""
    name = argv[0] if argv else "sudoku"
    one, two = gradient_digest(name, 1), gradient_digest(name, 2)
    same = "bitwise equal" if one == two else "DIFFER"
    print(f"{name}: 1 thread {one}, 2 threads {two}: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
