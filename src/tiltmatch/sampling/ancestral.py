"""MDLM's ancestral sampler (``sampler.mode: ancestral``): the reverse process of the
absorbing diffusion, step by step in time, as MDLM's released ``_sample`` runs it.

METHOD.md section 1: generation starts from the all-mask response. Here time runs from
``t = 1`` to ``eps = 1e-5`` over ``steps`` equal steps (``linspace(1, eps, steps + 1)``).
A step from ``t`` to ``s = t - (1 - eps) / steps`` keeps each masked position masked with
probability ``s / t`` and otherwise commits a token drawn from the denoiser's posterior
``mu(. | z, i)``: MDLM's ``q(x_s | x_t) ∝ mu (t - s)`` for the tokens and ``s`` for the
mask, drawn jointly per position (``_ddpm_caching_update``, the ``ddpm_cache`` predictor
of MDLM's loglinear schedule, whose move-chance at time ``t`` is ``t``). Visible tokens
stay. The denoiser is read again only after a step has changed the canvas (its
posteriors are a function of the canvas). After the last step every position still
masked takes its most probable token (MDLM's ``noise_removal``).

How many positions a step commits is therefore random (binomial), unlike the common
sampler's fixed quota; which tokens come out is the denoiser's posterior at temperature
1, the only one MDLM's sampler has. Draws follow MDLM's released arithmetic: one uniform
``u`` per response position and vocabulary entry, ``argmax(q / (1e-10 - log(u + 1e-10)))``
in float32, so the same uniforms give the same tokens as the released code (tested in
``tests/test_mdlm.py``). The mask token and ``forbidden_token_ids`` are never committed.

Reads ``steps``; ``block_length`` is inert (the whole response is one block, as MDLM
samples it); every other setting is refused. Any bidirectional family can be decoded
this way; a block-causal family has its own decoder and refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltmatch.sampling.strategy import Job, SampleOutput, SamplerStrategy, left_pad

#: the last time of MDLM's sampler (``_sample(eps=1e-5)``)
FINAL_TIME = 1e-5


@dataclass
class Reverse:
    """The state of one reverse process: prompts, canvas, step, the last posteriors."""

    job: Job
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    canvas: torch.Tensor
    times: torch.Tensor
    step: int = 0
    posterior: torch.Tensor | None = None


class AncestralSampler(SamplerStrategy):
    """MDLM's ancestral (DDPM, cached posteriors) sampler; see the module docstring."""

    name = "ancestral"
    reads = frozenset({"steps"})
    inert = frozenset({"block_length"})

    def decode(self, job: Job) -> SampleOutput:
        """All masks, ``steps`` reverse steps, then the most probable token at every
        position still masked."""
        device = next(job.denoiser.parameters()).device
        prompt_ids, prompt_mask = left_pad(job.prompts, job.denoiser.pad_token_id, device)
        canvas = torch.full(
            (len(job.prompts), job.response_length), job.denoiser.mask_token_id, device=device
        )
        times = torch.linspace(1.0, FINAL_TIME, self.config.steps + 1, device=device)
        state = Reverse(job, prompt_ids, prompt_mask, canvas, times)
        visited: list[torch.Tensor] = []
        while True:
            if job.record_states:
                visited.append(state.canvas.clone())
            if not self.step(state):
                break
        if job.record_states:
            visited.pop()  # the canvas after the last step is no step's input
        masked = state.canvas == job.denoiser.mask_token_id
        if bool(masked.any()):
            probs = self._posterior(state)
            state.canvas[masked] = probs.argmax(-1)[masked]
        return SampleOutput(state.canvas, torch.stack(visited) if job.record_states else None)

    def _posterior(self, state: Reverse) -> torch.Tensor:
        """``mu(. | z, i)`` ``[B, L, V]`` in float32, the banned tokens at 0 (cached until
        the canvas changes)."""
        if state.posterior is None:
            denoiser = state.job.denoiser
            logits = denoiser.response_logits(state.prompt_ids, state.prompt_mask, state.canvas)
            probs = torch.softmax(logits.float(), dim=-1)
            probs[..., state.job.banned] = 0.0
            state.posterior = probs
        return state.posterior

    def step(self, block: Reverse) -> bool:
        """One reverse step from ``t`` to ``s``; False once the steps are done."""
        if block.step == len(block.times) - 1:
            return False
        mask_id = block.job.denoiser.mask_token_id
        # As released: s = t - (1 - eps) / steps, in float32 (not the next grid point).
        t = block.times[block.step]
        s = t - (1 - FINAL_TIME) / (len(block.times) - 1)
        q = self._posterior(block) * (t - s)
        q[..., mask_id] = s
        u = torch.rand(q.shape, generator=block.job.generator, device=q.device)
        drawn = (q / (1e-10 - (u + 1e-10).log())).argmax(dim=-1)
        masked = block.canvas == mask_id
        moved = masked & (drawn != mask_id)
        if bool(moved.any()):
            block.canvas[moved] = drawn[moved]
            block.posterior = None
        block.step += 1
        return True
