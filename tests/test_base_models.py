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


def test_shipped_base_is_used_only_with_matching_task_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiltmatch.models.loading as loading
    from tiltmatch.experiments import base_models
    from tiltmatch.tasks import get_task

    folder = tmp_path / "countdown-base"
    folder.mkdir()
    monkeypatch.setattr(loading, "shipped_model_dir", lambda name: tmp_path / f"{name}-base")
    assert base_models.shipped_base("countdown") is None  # nothing shipped
    (folder / "config.json").write_text("{}")
    assert base_models.shipped_base("countdown") is None  # no record of its task options
    recipe = RECIPES["countdown"]
    options = base_models._resolved_options(get_task(recipe.task, **recipe.task_options))
    metrics = folder / base_models.METRICS_FILE
    metrics.write_text(json.dumps({"resolved_task_options": options}))
    assert base_models.shipped_base("countdown") == folder
    metrics.write_text(json.dumps({"resolved_task_options": {**options, "max_number": 30}}))
    assert base_models.shipped_base("countdown") is None  # made for other prompts


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_shipped_benchmark_bases_are_the_recipes_and_in_use(name: str) -> None:
    from tiltmatch.experiments import base_models

    folder = shipped_model_dir(name)
    if not (folder / "config.json").is_file():
        pytest.skip(f"the package ships no {name} base")
    record = json.loads((folder / base_models.METRICS_FILE).read_text())
    assert record["spec"] == asdict(RECIPES[name].spec)
    assert record["pretrain"] == asdict(RECIPES[name].pretrain)
    assert base_models.shipped_base(name) == folder  # the benchmark uses it
    assert (folder / "model.safetensors").stat().st_size < 2_000_000  # small enough to ship
