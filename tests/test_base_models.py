"""The base-model recipes: one maze recipe, and it is the one the shipped base records."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tiltmatch.experiments.base_models import RECIPES, main
from tiltmatch.models.loading import shipped_model_dir

ROOT = Path(__file__).resolve().parents[1]


def test_maze_recipe_is_the_shipped_bases() -> None:
    shipped = shipped_model_dir("maze")
    recorded = json.loads((shipped / "tiltmatch.json").read_text())["pretrain"]
    config = json.loads((shipped / "config.json").read_text())
    recipe = RECIPES["maze"]
    for key, value in asdict(recipe.pretrain).items():
        assert recorded[key] == value, key
    spec = recipe.spec
    assert (config["hidden_size"], config["num_hidden_layers"]) == (
        spec.hidden_size,
        spec.num_layers,
    )
    assert (config["num_attention_heads"], config["intermediate_size"]) == (
        spec.num_heads,
        spec.intermediate_size,
    )
    assert config["max_position_embeddings"] == spec.max_positions


def test_make_base_maze_uses_the_recipe() -> None:
    makefile = (ROOT / "Makefile").read_text()
    block = makefile.split("base-maze:", 1)[1].split("\n\n", 1)[0]
    assert "tiltmatch.experiments.base_models --task maze" in block
    assert "--steps" not in block and "--num-layers" not in block  # no second recipe


def test_folder_refuses_to_overwrite_a_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["--task", "maze", "--folder", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--task", "maze", "--task", "sudoku", "--folder", str(tmp_path / "x")])
