# The few commands a person runs. Each sets up what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The versions README's figures came from; `make setup CONSTRAINTS=` resolves the newest
# versions pyproject.toml's bounds allow instead (README, "Upgrading the dependencies").
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: setup constraints demo rlhf test lint format bench base-maze clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull CUDA packages.
	$(BIN)/python -m pip install -q $(PIN) torch==2.13.0
	# rlhf (TRL) and trackers (wandb, trackio) too, so the tests of those paths run in CI.
	$(BIN)/python -m pip install -q $(PIN) -e ".[llm,dev,rlhf,trackers]"
	touch $(STAMP)

setup: $(STAMP)

constraints: $(STAMP)  ## record the environment's versions in constraints.txt (after an upgrade)
	$(BIN)/python .ci/freeze-constraints > constraints.txt

demo: $(STAMP)  ## fine-tune the shipped maze base model with DTM and write a report
	$(BIN)/tiltmatch demo --out runs/demo

rlhf: $(STAMP)  ## a reward model trained with TRL on preference pairs, then DTM against it
	$(BIN)/python benchmarks/rlhf.py --out runs/rlhf
	# the same reward model, half the tilt (a_end 2): where the true reward still rises
	$(BIN)/python benchmarks/rlhf.py --size small --reward-model runs/rlhf/reward-model \
		--out runs/rlhf-small

test: $(STAMP)  ## the test suite (what CI runs)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

base-maze: $(STAMP)  ## rebuild the shipped maze base model (about 30 CPU-minutes)
	# The recipe is tiltmatch.experiments.base_models.RECIPES["maze"] (the only maze recipe).
	$(BIN)/python -m tiltmatch.experiments.base_models --task maze \
		--folder src/tiltmatch/assets/maze-base --overwrite --verbose

bench: $(STAMP)
	$(BIN)/python benchmarks/side_by_side.py --out runs/bench

clean:
	rm -rf $(VENV) runs
