"""What makes two runs of the demo differ bit for bit? (README "Reproducibility across machines")

A short run of the demo's configuration (the shipped maze base, 2 stages of 20 updates,
a 32-prompt buffer), checkpoints off; prints one JSON line with the thread count, ATen's
CPU capability, the numerics environment variables and a SHA-256 of the student's final
parameters. Run it under different settings and compare the hashes, e.g.

    python benchmarks/repro_probe.py --threads 2
    python benchmarks/repro_probe.py --threads 1
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/repro_probe.py --threads 1
    MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/repro_probe.py --threads 1

(The environment variables must be set before Python starts: torch reads them once.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from tiltmatch.config import build_config
from tiltmatch.experiments.demo import demo_config_path, numerics_environment
from tiltmatch.models.loading import shipped_model_dir
from tiltmatch.training.runner import build_trainer

SHORT = [
    "dtm.steps_per_h=20",
    "dtm.a_end=4",
    "train.buffer_prompts=32",
    "train.refresh_prompts=8",
    "train.refresh_every=10",
    "train.train_examples=64",
    "eval.examples=8",
    "eval.samples_per_example=2",
]


def main() -> None:
    """Run the short training and print its parameter hash."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config(demo_config_path(), [f"model.base={shipped_model_dir('maze')}", *SHORT])
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        trainer, _, _ = build_trainer(config, Path(out), quiet=True)
        trainer.checkpointing = False
        history = trainer.train()
    digest = hashlib.sha256()
    for _, tensor in sorted(trainer.pair.student.state_dict().items()):
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    print(
        json.dumps(
            {
                **numerics_environment(),
                "student_sha256": digest.hexdigest()[:16],
                "eval_reward": history[-1].get("eval_reward"),
                "seconds": round(time.time() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
