#!/usr/bin/env bash
# Train the demo's configuration, cut to one stage of 30 updates, with the code of two
# commits in the same environment, and print the SHA-256 of each final model: equal hashes
# mean the code change left training bit-identical (BENCHMARKS.md, "Demo reproducibility").
#   bash benchmarks/demo_code_parity.sh OLD_COMMIT [NEW_COMMIT] [THREADS]
set -euo pipefail
old=$1 new=${2:-HEAD} threads=${3:-2}
root=$(git rev-parse --show-toplevel) py=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
for rev in "$old" "$new"; do
    git -C "$root" worktree add -q --detach "$work/$rev" "$rev"
    config=src/tiltmatch/experiments/configs/demo_maze.yaml  # the layout of this round
    [ -f "$work/$rev/$config" ] || config=src/tiltmatch/configs/demo_maze.yaml  # before it
    (cd "$work/$rev" && PYTHONPATH=src OMP_NUM_THREADS=$threads "$py" -m tiltmatch.cli train \
        --config "$config" --out "$work/run-$rev" --quiet --set dtm.steps_per_h=30 \
        --set dtm.a_end=2.0 --set train.buffer_prompts=32 --set train.refresh_prompts=8 \
        --set train.refresh_every=10 --set eval.examples=10 --set train.checkpoint_every=1000 \
        > "$work/run-$rev.log" 2>&1)
    echo "$rev $(sha256sum "$work/run-$rev/final/model.safetensors" | cut -d' ' -f1)"
    git -C "$root" worktree remove --force "$work/$rev"
done
