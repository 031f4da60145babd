"""The side-by-side benchmark of DTM and its baselines (see BENCHMARKS.md).

    python benchmarks/side_by_side.py --quick --out runs/bench-quick
    python benchmarks/side_by_side.py --out runs/bench          # default size

Same as ``tiltmatch bench ...``; the logic lives in :mod:`tiltmatch.experiments.bench`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiltmatch.experiments.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
