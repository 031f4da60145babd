"""Pictures of a maze and of the paths a model takes through it.

The demo's headline figure: the base model's path distribution next to the
fine-tuned one's on the same maze. A model that matches the tilted target
(METHOD.md section 2) keeps several shortest paths, each drawn with a width
in proportion to its frequency; a collapsed model shows one thick line.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas
directly, so importing this module touches no global pyplot state or backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from tiltmatch.tasks.maze.task import Maze, path_length

# Paths beyond this many (the least frequent) are left out of a panel to keep it legible.
MAX_DRAWN_PATHS = 24
# Half the spread of the per-path offsets, in cell units: overlapping paths stay visible.
OFFSET_SPREAD = 0.22

_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
)


def draw_maze(
    ax: Any,
    maze: Maze,
    path_counts: Mapping[str, int] | None = None,
    title: str = "",
) -> None:
    """Draw ``maze`` on the matplotlib axes ``ax``, with the valid paths of ``path_counts``.

    Walls are dark, S and G are marked. Each distinct valid path (a move string
    from S ending on G) is a line through the cell centres whose width and
    opacity scale with its count; shortest paths are solid, longer ones dashed.
    Each path is shifted by a small offset of its own so overlapping paths stay
    visible. Keys that are not valid paths (e.g. ``"<invalid>"``) are counted
    in the caption but not drawn.
    """
    n = maze.size
    walls = np.array([[ch == "#" for ch in row] for row in maze.grid], dtype=float)
    ax.imshow(walls, cmap=ListedColormap(["#f4f1e8", "#2b2b2b"]), vmin=0, vmax=1)
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#c8c3b4", linewidth=0.6)
    ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)  # row 0 at the top, as the prompt text reads

    caption = ""
    if path_counts:
        caption = _draw_paths(ax, maze, path_counts)

    for cell, label, colour in ((maze.start, "S", "#2ca02c"), (maze.goal, "G", "#d62728")):
        ax.scatter([cell[1]], [cell[0]], s=420, color=colour, zorder=5, edgecolors="white")
        ax.text(
            cell[1],
            cell[0],
            label,
            ha="center",
            va="center",
            color="white",
            fontsize=11,
            fontweight="bold",
            zorder=6,
        )
    ax.set_title(f"{title}\n{caption}" if caption else title, fontsize=10)


def _draw_paths(ax: Any, maze: Maze, path_counts: Mapping[str, int]) -> str:
    """Draw the valid paths of ``path_counts``; return a one-line caption."""
    total = sum(int(k) for k in path_counts.values())
    valid = {p: int(k) for p, k in path_counts.items() if k > 0 and path_length(maze, p)}
    shortest = maze.shortest_length()
    # Most frequent first, ties by text so the picture is reproducible.
    ranked = sorted(valid.items(), key=lambda item: (-item[1], item[0]))[:MAX_DRAWN_PATHS]
    top = ranked[0][1] if ranked else 1
    k = len(ranked)
    # Draw the rarest first so the frequent paths sit on top.
    for rank in reversed(range(k)):
        moves, count = ranked[rank]
        cells = maze.cells(moves)
        assert cells is not None  # filtered to valid paths above
        shift = 0.0 if k == 1 else -OFFSET_SPREAD + 2 * OFFSET_SPREAD * rank / (k - 1)
        # The same shift on both axes separates horizontal and vertical overlaps alike.
        xs = [c + shift for _, c in cells]
        ys = [r + shift for r, _ in cells]
        share = count / top
        ax.plot(
            xs,
            ys,
            color=_COLOURS[rank % len(_COLOURS)],
            linewidth=1.0 + 6.0 * share,
            alpha=0.3 + 0.7 * share,
            linestyle="-" if len(moves) == shortest else "--",
            solid_capstyle="round",
            zorder=3,
        )
    n_valid = sum(valid.values())
    n_optimal = sum(1 for p in valid if len(p) == shortest)
    return f"{n_valid}/{total} valid, {len(valid)} distinct paths, {n_optimal} shortest"


def before_after_figure(
    maze: Maze,
    base_counts: Mapping[str, int],
    final_counts: Mapping[str, int],
    path: str | Path,
    titles: tuple[str, str] = ("base model", "fine-tuned"),
) -> None:
    """Write a PNG with two panels: the maze with the base model's paths and with the
    fine-tuned model's paths (counts of decoded responses on that maze)."""
    fig = Figure(figsize=(8.0, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    draw_maze(axes[0], maze, base_counts, titles[0])
    draw_maze(axes[1], maze, final_counts, titles[1])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
