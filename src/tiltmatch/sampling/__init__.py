"""From prompts to responses: the sampler, rollouts and the replay buffer (METHOD.md sections 1
and 6).
"""
