"""RLHF for a masked diffusion model: a learned reward model, then DTM against it.

1. Preference pairs: the shipped maze base samples responses to training mazes; a pair
   is two responses of one maze with different *true* rewards (the maze task's: 1 for
   a shortest path, less for a longer valid one, 0 for an invalid one), the better one
   "chosen". The true reward is the hidden preference the pairs were made from.
2. A small reward model (a 2-layer Llama sequence classifier over characters) is
   trained on the pairs with TRL's ``RewardTrainer`` (Bradley-Terry loss) and saved as
   a reward model folder (safetensors + tokenizer).
3. The base is DTM-tuned against the reward model alone (``DTMTrainer`` with the
   folder as ``reward_funcs``) on training mazes' prompts.
4. On held-out mazes, before and after: the reward model's mean score, the true reward,
   the valid- and shortest-path rates, and the distinct shortest paths kept per maze.

The reward model's scores are unbounded; they are rescaled by ``train.reward_scale``
= 1 / (their std on the base's samples of training mazes), so ``a_end`` is in units of
that spread (METHOD.md section 2: ``1/a_end`` is the KL price).

    python benchmarks/rlhf.py --out runs/rlhf            # or: make rlhf
    python benchmarks/rlhf.py --size small --reward-model runs/rlhf/reward-model \
        --out runs/rlhf-small                            # reuse that reward model
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tiltmatch import DTMArguments, DTMTrainer
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.loading import load_model_folder, resolve_model_path
from tiltmatch.rewards import RewardModel, char_level_tokenizer
from tiltmatch.sampling.sampler import SamplingConfig
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example
from tiltmatch.training.evaluation import sample_texts
from tiltmatch.training.rollouts import RolloutWorker

SIZES: dict[str, dict[str, Any]] = {
    # pref_mazes x samples -> pairs; rm_epochs; DTM: a_end / h / steps_per_h / buffer
    "default": dict(
        pref_mazes=400,
        samples=4,
        rm_epochs=3,
        a_end=4.0,
        h=1.0,
        steps_per_h=100,
        buffer_prompts=64,
        refresh_prompts=16,
        eval_mazes=60,
        eval_samples=8,
    ),
    # The default's preference data and reward model, a shorter DTM run (a_end 2, not 4).
    "small": dict(
        pref_mazes=400,
        samples=4,
        rm_epochs=3,
        a_end=2.0,
        h=1.0,
        steps_per_h=40,
        buffer_prompts=32,
        refresh_prompts=8,
        eval_mazes=40,
        eval_samples=8,
    ),
    "quick": dict(
        pref_mazes=60,
        samples=4,
        rm_epochs=1,
        a_end=2.0,
        h=1.0,
        steps_per_h=10,
        buffer_prompts=8,
        refresh_prompts=4,
        eval_mazes=10,
        eval_samples=4,
    ),
}

# Compatible noise: the draws of the recorded figures (BENCHMARKS.md "RLHF"), token for token.
SAMPLING = SamplingConfig(
    steps=8, block_length=8, remasking="random", temperature=1.0, noise="compatible"
)


def base_policy(task):
    model, codec = load_model_folder(resolve_model_path("shipped:maze"), task)
    assert isinstance(codec, CharTokenizer)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    return denoiser, codec


def preference_pairs(task, texts: list[list[str]], examples: list[Example]) -> list[dict]:
    """Every pair of a maze's responses with different true rewards, the better one chosen."""
    rows = []
    for example, group in zip(examples, texts, strict=True):
        scored = sorted({t: task.reward(t, example) for t in group}.items())
        for i, (a, ra) in enumerate(scored):
            for b, rb in scored[i + 1 :]:
                if ra != rb:
                    chosen, rejected = (a, b) if ra > rb else (b, a)
                    rows.append({"prompt": example.prompt, "chosen": chosen, "rejected": rejected})
    return rows


def train_reward_model(pairs: list[dict], alphabet: str, folder: Path, epochs: int, seed: int):
    """A small sequence classifier trained on the pairs with TRL's RewardTrainer."""
    import datasets
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = char_level_tokenizer(alphabet)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    args = RewardConfig(
        output_dir=str(folder.parent / "reward-trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        max_length=64,
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    result = trainer.train()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return float(result.training_loss)


def pair_accuracy(reward: RewardModel, pairs: list[dict]) -> float:
    """Fraction of pairs the reward model orders as the true reward does."""
    if not pairs:
        return float("nan")
    examples = [Example(prompt=p["prompt"], uid=str(i)) for i, p in enumerate(pairs)]
    chosen = reward([p["chosen"] for p in pairs], examples)
    rejected = reward([p["rejected"] for p in pairs], examples)
    return float((chosen > rejected).float().mean())


def measure(task, reward, worker, denoiser, examples, samples: int, seed: int) -> dict[str, float]:
    """Held-out figures of one policy: reward-model score, true reward, paths kept."""
    texts = sample_texts(worker, denoiser, examples, samples, 1.0, seed)
    flat = [t for group in texts for t in group]
    flat_ex = [e for e in examples for _ in range(samples)]
    metrics = task.metrics(flat, flat_ex)
    return {
        "reward_model_score": float(reward(flat, flat_ex).mean()),
        "true_reward": metrics["reward"],
        "shortest_path_rate": metrics["accuracy"],
        "valid_path_rate": metrics["valid"],
        "distinct_shortest_paths_per_maze": metrics["distinct_optimal_paths"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; write ``report.json`` and ``report.md`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/rlhf")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reward-model",
        help="reuse this reward model folder (one trained by this script with the same "
        "--seed and pair settings) instead of training one",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    out = Path(args.out)
    if (out / "report.json").exists():
        print(f"error: {out} already holds a finished run; choose another --out", file=sys.stderr)
        return 2
    if args.reward_model and not (Path(args.reward_model) / "config.json").is_file():
        print(f"error: --reward-model {args.reward_model}: not a model folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    torch.manual_seed(args.seed)
    task = get_task("maze")
    denoiser, codec = base_policy(task)
    worker = RolloutWorker(task, codec, task.response_length, SAMPLING)

    # 1. preference pairs from the base's own samples, ordered by the hidden true reward
    print("rlhf: 1/3 sampling the base's responses for preference pairs", file=sys.stderr)
    train_mazes = task.examples("train", size["pref_mazes"] + 2000, seed=args.seed)
    pref_mazes, dtm_mazes = train_mazes[: size["pref_mazes"]], train_mazes[size["pref_mazes"] :]
    test_mazes = task.examples("test", size["eval_mazes"], seed=12345)
    texts = sample_texts(worker, denoiser, pref_mazes, size["samples"], 1.0, args.seed + 1)
    pairs = preference_pairs(task, texts, pref_mazes)
    random.Random(args.seed).shuffle(pairs)
    held = max(len(pairs) // 10, 1)
    rm_val, rm_train = pairs[:held], pairs[held:]
    t_pairs = time.time()

    # 2. the reward model, with TRL's RewardTrainer
    print("rlhf: 2/3 the reward model (TRL's RewardTrainer)", file=sys.stderr)
    rm_folder = out / "reward-model"
    rm_loss = float("nan")
    if args.reward_model:
        rm_folder = Path(args.reward_model)
    else:
        rm_loss = train_reward_model(
            rm_train, codec.alphabet, rm_folder, size["rm_epochs"], args.seed
        )
    reward = RewardModel(rm_folder, batch_size=256)
    test_texts = sample_texts(worker, denoiser, test_mazes, size["samples"], 1.0, args.seed + 2)
    test_pairs = preference_pairs(task, test_texts, test_mazes)
    flat_train = [t for g in texts for t in g]
    flat_train_ex = [e for e in pref_mazes for _ in range(size["samples"])]
    spread = float(reward(flat_train, flat_train_ex).std())
    t_rm = time.time()

    # 3. DTM against the reward model alone
    before = measure(task, reward, worker, denoiser, test_mazes, size["eval_samples"], 777)
    config = DTMArguments(
        output_dir=str(out / "dtm"),
        seed=args.seed,
        max_completion_length=task.response_length,
        block_length=8,
        diffusion_steps=8,
        remasking="random",
        temperature=1.0,
        num_generations=8,
        per_device_train_batch_size=64,
        buffer_prompts=size["buffer_prompts"],
        refresh_prompts=size["refresh_prompts"],
        refresh_every=max(size["steps_per_h"] // 2, 1),
        learning_rate=3e-4,
        final_learning_rate=1e-4,
        a_end=size["a_end"],
        h=size["h"],
        steps_per_h=size["steps_per_h"],
        reward_scale=1.0 / max(spread, 1e-6),
        eval_examples=16,
        eval_samples_per_example=2,
        report_to="tensorboard",
        disable_tqdm=False,  # the run's plan, progress bar and time left (make rlhf)
        run_overrides={"sampler.noise": "compatible"},  # as SAMPLING
    )
    print("rlhf: 3/3 DTM against the reward model", file=sys.stderr)
    trainer = DTMTrainer(
        model="shipped:maze",
        reward_funcs=reward,
        train_dataset=[{"prompt": e.prompt} for e in dtm_mazes],
        eval_dataset=[{"prompt": e.prompt} for e in test_mazes[:16]],
        args=config,
    )
    trainer.train()
    trainer.save_model()
    t_dtm = time.time()
    after = measure(
        task, reward, worker, trainer.trainer.pair.student, test_mazes, size["eval_samples"], 777
    )

    report = {
        "size": args.size,
        "seed": args.seed,
        "preference_pairs": {"train": len(rm_train), "validation": len(rm_val)},
        "reward_model": {
            "folder": str(rm_folder),
            "train_loss": rm_loss,
            "pair_accuracy_validation": pair_accuracy(reward, rm_val),
            "pair_accuracy_test_mazes": pair_accuracy(reward, test_pairs),
            "score_std_on_base_samples": spread,
        },
        "dtm": {
            "a_end": size["a_end"],
            "h": size["h"],
            "steps_per_h": size["steps_per_h"],
            "updates": trainer.trainer.phase.updates,
            "rollouts": trainer.trainer.phase.rollouts,
            "reward_scale": 1.0 / max(spread, 1e-6),
        },
        "held_out": {
            "mazes": len(test_mazes),
            "samples_per_maze": size["eval_samples"],
            "before": before,
            "after": after,
        },
        "seconds": {
            "pairs": t_pairs - started,
            "reward_model": t_rm - t_pairs,
            "dtm": t_dtm - t_rm,
            "total": time.time() - started,
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| held-out mazes | base | after DTM vs the reward model |",
        "| --- | --- | --- |",
        *(f"| {k} | {before[k]:.3f} | {after[k]:.3f} |" for k in before),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
