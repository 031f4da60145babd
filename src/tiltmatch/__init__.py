"""tiltmatch: Discrete Tilt Matching (DTM) for masked diffusion language models.

The subpackages read in the order data flows (METHOD.md; ARCHITECTURE.md draws it):

- ``tasks``      make prompts and score responses (rewards in [0, 1]);
- ``models``     the denoiser adapter around a Hugging Face ``PreTrainedModel``, codecs, loading;
- ``sampling``   turns prompts into responses (and the states it visited); rollouts, buffer;
- ``dtm``        tilt weights, annealing schedules, masked states, the c-DTM loss, its objective;
- ``baselines``  diffu-GRPO, wd1 and rejection sampling behind the same ``Objective``;
- ``training``   the method registry, the student/teacher pair, the trainer (orchestration only);
- ``experiments`` the demo, benchmark and ablation, on top of the library (never imported by it).
"""

__version__ = "0.1.0"
