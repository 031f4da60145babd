# The few commands a person runs. Each sets up what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo rlhf test lint format bench base-maze clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[llm,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## fine-tune the shipped maze base model with DTM and write a report
	$(BIN)/tiltmatch demo --out runs/demo

$(VENV)/.rlhf: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[rlhf]"
	touch $(VENV)/.rlhf

rlhf: $(VENV)/.rlhf  ## a reward model trained with TRL on preference pairs, then DTM against it
	$(BIN)/python benchmarks/rlhf.py --out runs/rlhf

test: $(STAMP)  ## the test suite (what CI runs)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

base-maze: $(STAMP)  ## rebuild the shipped maze base model (about 30 CPU-minutes)
	$(BIN)/tiltmatch pretrain --task maze --out src/tiltmatch/assets/maze-base \
		--steps 6000 --hidden-size 96 --num-layers 4 --num-heads 4

bench: $(STAMP)
	$(BIN)/python benchmarks/side_by_side.py --out runs/bench

clean:
	rm -rf $(VENV) runs
