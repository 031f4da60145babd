"""tiltmatch: Discrete Tilt Matching (DTM) for masked diffusion language models.

The Python API (TRL's idiom; imported lazily, so ``import tiltmatch`` stays light)::

    from tiltmatch import DTMArguments, DTMTrainer
    trainer = DTMTrainer(model=..., reward_funcs=..., train_dataset=..., args=DTMArguments(...))
    trainer.train(); trainer.save_model()

    model = tiltmatch.load_pretrained("runs/x/final")      # a saved folder, in one call
    model.generate(["a prompt"], num_return_sequences=4)   # completions, in one call

The subpackages read in the order data flows (METHOD.md; ARCHITECTURE.md draws it):

- ``tasks``      make prompts and score responses (``tasks.dataset``: any prompt dataset);
- ``rewards``    the batched reward interface (task rewards, functions, reward models);
- ``models``     the denoiser adapter around a Hugging Face ``PreTrainedModel``, codecs, loading;
- ``sampling``   turns prompts into responses (and the states it visited); rollouts, buffer;
- ``dtm``        tilt weights, annealing schedules, masked states, the c-DTM loss, its objective;
- ``baselines``  diffu-GRPO, wd1, rejection sampling, SPG, ESPO and coupled-GRPO behind the
                 same ``Objective``;
- ``training``   the method registry, the student/teacher pair, the trainer (orchestration only);
- ``generation`` a saved model's record and card, ``load_pretrained`` and ``DiffusionLM.generate``;
- ``api``        ``DTMArguments`` / ``DTMTrainer`` and the baselines' trainers (TRL's idiom);
- ``experiments`` the demo, benchmark and ablation, on top of the library (never imported by it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DTMArguments": "tiltmatch.api",
    "DTMConfig": "tiltmatch.api",  # the earlier name of DTMArguments (deprecated)
    "DTMTrainer": "tiltmatch.api",
    "DiffuGRPOTrainer": "tiltmatch.api",
    "WD1Trainer": "tiltmatch.api",
    "RejectionTrainer": "tiltmatch.api",
    "SPGTrainer": "tiltmatch.api",
    "ESPOTrainer": "tiltmatch.api",
    "CoupledGRPOTrainer": "tiltmatch.api",
    "TrainOutput": "tiltmatch.api",
    "load_pretrained": "tiltmatch.generation.pretrained",
    "DiffusionLM": "tiltmatch.generation.pretrained",
    "RewardFunction": "tiltmatch.rewards",
    "RewardModel": "tiltmatch.rewards",
    "CallableReward": "tiltmatch.rewards",
    "WeightedRewards": "tiltmatch.rewards",
    "make_reward": "tiltmatch.rewards",
}

__all__ = ["__version__", *(name for name in _LAZY if name != "DTMConfig")]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiltmatch' has no attribute {name!r}")
