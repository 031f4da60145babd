"""From prompts to responses: the sampler, its registered strategies, rollouts and the replay
buffer (METHOD.md sections 1 and 6).

Nothing is imported here: the strategies are found through ``sampling/registry.py`` when
first used, so the run config reads ``sampling/config.py`` without torch.
"""
