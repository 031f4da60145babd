"""From prompts to responses: the sampler, rollouts and the replay buffer (METHOD.md sections 1
and 6).
"""

# The model families' own decoders register with the sampler on import (sampler.FAMILY_DECODERS).
from tiltmatch.sampling import families as _families  # noqa: F401
