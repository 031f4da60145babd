"""Pretrain the benchmark's base models (see BENCHMARKS.md).

    python benchmarks/base_models.py --out runs/bases              # sudoku and countdown
    python benchmarks/base_models.py --out runs/bases --task maze  # maze fallback

The recipes live in :mod:`tiltmatch.experiments.base_models`.
"""

from __future__ import annotations

import sys

from tiltmatch.experiments.base_models import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
