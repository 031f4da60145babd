"""The maze's exact tilted target: outcome keys and per-maze reports (METHOD.md section 7).

A maze's responses are enumerable paths, so :mod:`tiltmatch.dtm.exact_target`'s
generic estimator applies to them once each response has an outcome key
(:func:`maze_outcome`) and the task's reward and "optimal" (a shortest path)
are attached (:func:`maze_target_report`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from tiltmatch.dtm.exact_target import TargetReport, target_report
from tiltmatch.tasks.base import Example
from tiltmatch.tasks.maze.task import MazeTask, maze_of, path_length

# All invalid maze responses share this outcome key (see maze_outcome).
INVALID = "<invalid>"


def maze_outcome(response: str, example: Example) -> str:
    """The outcome key of a maze response: the move string if it is a valid path, else
    ``"<invalid>"``.

    Every invalid response has reward 0, so the tilt treats them alike; lumping
    them into one key keeps that mass in one estimate instead of spreading it
    over many rare strings, which would inflate the TV estimator's noise
    (each rare string is a separate small-count cell of the histogram). The
    response length limit of the task is not checked here: pass responses
    decoded from the model, which cannot exceed it.
    """
    return response if path_length(maze_of(example), response) is not None else INVALID


def maze_target_report(
    task: MazeTask,
    example: Example,
    base_a: Sequence[str],
    base_b: Sequence[str],
    model_samples: Sequence[str],
    beta: float,
) -> TargetReport:
    """:func:`target_report` for one maze: raw decoded responses in, outcome keys by
    :func:`maze_outcome`, the task's reward, and "optimal" meaning a shortest path."""
    shortest = maze_of(example).shortest_length()

    def reward(key: Hashable) -> float:
        return 0.0 if key == INVALID else task.reward(str(key), example)

    def is_optimal(key: Hashable) -> bool:
        return key != INVALID and len(str(key)) == shortest

    def keys(responses: Sequence[str]) -> list[str]:
        return [maze_outcome(r, example) for r in responses]

    return target_report(keys(base_a), keys(base_b), keys(model_samples), reward, beta, is_optimal)
