"""The sampler's geometry: block length and step count, derived from the response length.

The semi-autoregressive sampler (METHOD.md section 1) needs the block length to divide the
response length and the steps to be a multiple of the blocks. A setting left unset is derived
here from the response length and a preferred geometry (the model's recorded sampler, or the
defaults), so that only a value the user gave can fail the check, and then with the values
that would pass named. No torch: the run config and the command line use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """Block length and steps over the whole response (``SamplingConfig``'s two fields)."""

    block_length: int
    steps: int


#: ``SamplingConfig``'s defaults: what an unset geometry prefers without a record
DEFAULT_GEOMETRY = Geometry(block_length=8, steps=8)


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def derive_geometry(
    length: int,
    block_length: int | None = None,
    steps: int | None = None,
    preferred: Geometry = DEFAULT_GEOMETRY,
    preferred_length: int | None = None,
) -> Geometry:
    """The geometry for a response of ``length`` tokens: the given values as they are, the
    unset ones derived.

    An unset block length is the preferred one when it divides ``length``, else the largest
    divisor of ``length`` not above it. Unset steps keep the preferred tokens per step (the
    preferred steps scaled by ``length / preferred_length`` when the preference was recorded
    at another length, else the preferred steps as they are), clipped to one step per block
    up to one per token and rounded up to a multiple of the blocks. Where the preferred values
    already fit, they are kept unchanged.
    """
    if length < 1:
        raise ValueError(f"the response length must be at least 1, got {length}")
    if block_length is None:
        block_length = max(d for d in divisors(length) if d <= max(1, preferred.block_length))
    if steps is None:
        blocks = max(1, length // block_length)
        wanted = preferred.steps
        if preferred_length and preferred_length != length:
            wanted = max(1, round(preferred.steps * length / preferred_length))
        wanted = min(max(wanted, blocks), max(length, blocks))
        steps = -(-wanted // blocks) * blocks
    return Geometry(block_length=block_length, steps=steps)


def geometry_problem(
    length: int,
    geometry: Geometry,
    names: tuple[str, str, str],
    more_steps_than_tokens: bool = True,
) -> str | None:
    """One line saying why ``geometry`` cannot sample ``length`` tokens (None when it can).

    ``names``: the caller's names of the length, the block length and the steps (a run
    config's ``task_options.response_length``, ``sampler.block_length``, ``sampler.steps``;
    the API's or the command line's own), so that the line speaks the user's vocabulary.
    ``more_steps_than_tokens``: also refuse more steps than tokens (a run's preflight says
    that in its own words).
    """
    length_name, block_name, steps_name = names
    block, steps = geometry.block_length, geometry.steps
    if length % block:
        fits = ", ".join(str(d) for d in divisors(length) if d <= 64)
        return (
            f"{block_name} {block} does not divide {length_name} {length} (it may be "
            f"{fits}; leave {block_name} unset to derive it)"
        )
    blocks = length // block
    if steps % blocks:
        lower, upper = steps // blocks * blocks, -(-steps // blocks) * blocks
        near = " or ".join(str(s) for s in sorted({lower, upper}) if s >= blocks)
        return (
            f"{steps_name} {steps} is not a multiple of the {blocks} blocks of {block} tokens "
            f"(e.g. {near}; leave {steps_name} unset to derive it)"
        )
    if more_steps_than_tokens and steps > length:
        return (
            f"{steps_name} {steps} exceeds {length_name} {length} (a step commits at least one "
            f"token; leave {steps_name} unset to derive it)"
        )
    return None
