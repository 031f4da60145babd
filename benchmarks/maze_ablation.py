"""The maze ablation (METHOD.md section 7): annealing x control variate x states x seeds.

    python benchmarks/maze_ablation.py --size small --out runs/ablation
    python benchmarks/maze_ablation.py --size small --states random --out runs/ablation

The logic lives in :mod:`tiltmatch.experiments.ablation`; see BENCHMARKS.md for results.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiltmatch.experiments.ablation import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
