"""tiltmatch: Discrete Tilt Matching (DTM) for masked diffusion language models.

The package reads in the order data flows (see METHOD.md):

- ``tasks``      make prompts and score responses (rewards in [0, 1]);
- ``model``      the denoiser adapter around a Hugging Face ``PreTrainedModel``;
- ``sampler``    turns prompts into responses (and the states it visited);
- ``weights``    turns rewards into tilt weights (control variates, baselines, ESS);
- ``schedule``   chooses the tilt increments ``h`` of the annealing path;
- ``states``     draws the partly masked states the loss is evaluated on;
- ``loss``       turns states, targets and weights into a number;
- ``trainer``    only orchestrates.
"""

__version__ = "0.1.0"
