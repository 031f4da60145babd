"""Discrete Tilt Matching itself (METHOD.md sections 2-6): weights, schedules, states, loss,
objective, exact target.
"""
