"""Artifacts in Hugging Face's layout (issue 22, item 6): the model card's metadata and sizes,
a LoRA adapter at the top of its folder naming its base as the config does (not a path of
this machine), ``load_pretrained`` of an adapter, and a base-less LoRA run saved merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_api import letters_of_word, tiny_args

import tiltmatch
from tiltmatch import DTMTrainer
from tiltmatch.models.loading import shipped_model_dir

peft = pytest.importorskip("peft")

MAZES = [{"prompt": p} for p in ("#S.G", ".S#G", "S..G", "#.SG")]


def maze_reward(prompts, completions, **columns):
    return [float(len(c)) / 8 for c in completions]


def card_metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def lora_trainer(tmp_path: Path, base: str | None) -> DTMTrainer:
    args = tiny_args(tmp_path / "run", max_completion_length=8, block_length=8, diffusion_steps=8)
    if base is not None:
        args.model_init_kwargs = {}  # the base brings its own sizes
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    if base is None:
        return DTMTrainer(
            reward_funcs=letters_of_word,
            train_dataset=[{"prompt": "say cat:", "word": "cat"}] * 4,
            args=args,
            peft_config=lora,
        )
    return DTMTrainer(
        model=base, reward_funcs=maze_reward, train_dataset=MAZES, args=args, peft_config=lora
    )


def test_a_lora_adapter_is_saved_at_the_top_naming_its_base_as_given(tmp_path, monkeypatch):
    base = tmp_path / "bases" / "maze"
    base.parent.mkdir()
    shutil.copytree(shipped_model_dir("maze"), base)
    monkeypatch.chdir(tmp_path)
    trainer = lora_trainer(tmp_path, "bases/maze")  # relative, as a user writes it
    trainer.train()
    folder = trainer.save_model()
    assert (folder / "adapter_config.json").is_file() and not (folder / "student").exists()
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "bases/maze"  # not this machine's path
    assert json.loads((folder / "tiltmatch.json").read_text())["base"] == "bases/maze"
    meta = card_metadata(folder)
    assert meta["base_model"] == "bases/maze" and meta["library_name"] == "tiltmatch"
    card = (folder / "README.md").read_text()
    # the base's own sizes, not the tiny-model defaults of the config
    assert "hidden_size:" not in card and "LoRA adapters" in card
    # PEFT's loader takes the folder onto its base (PeftModel.from_pretrained, inside
    # load_pretrained, which merges the student into it)
    model = tiltmatch.load_pretrained(folder, device="cpu")
    trainer.trainer.pair.student.eval()
    ids = torch.tensor([[3, 4, 5, 6, 1, 1, 1, 1]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = trainer.trainer.pair.student(ids, mask, 4)
        got = model.denoiser(ids, mask, 4)
    assert torch.allclose(want, got, atol=1e-5)
    assert model.record.response_length == 8
    assert len(model.generate("#S.G", num_return_sequences=2)) == 2


def test_a_base_less_lora_run_is_saved_merged(tmp_path) -> None:
    trainer = lora_trainer(tmp_path, None)
    trainer.train()
    folder = trainer.save_model()
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "adapter_config.json").exists()
    model = tiltmatch.load_pretrained(folder, device="cpu")
    ids = torch.tensor([[3, 4, 5, 1, 1, 1, 1, 1, 1, 1, 1]])
    mask = torch.ones_like(ids)
    trainer.trainer.pair.student.eval()
    with torch.no_grad():
        assert torch.allclose(
            trainer.trainer.pair.student(ids, mask, 8), model.denoiser(ids, mask, 8), atol=1e-5
        )


def test_fresh_model_sizes_with_a_given_model_are_refused(tmp_path) -> None:
    from tiltmatch.config import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"model_init_kwargs hidden_size, intermediate_size, num_heads, num_layers size",
    ):
        DTMTrainer(
            model="shipped:maze",
            reward_funcs=maze_reward,
            train_dataset=MAZES,
            args=tiny_args(tmp_path),
        )


def test_the_card_names_hub_datasets_only(tmp_path) -> None:
    from tiltmatch.tasks.dataset import hub_name

    assert hub_name("openai/gsm8k:test") == "openai/gsm8k"
    assert hub_name("prompts.jsonl") is None and hub_name([{"prompt": "x"}]) is None
    args = tiny_args(tmp_path / "r")
    trainer = DTMTrainer(
        reward_funcs=letters_of_word, train_dataset=[{"prompt": "say x:", "word": "x"}], args=args
    )
    meta = card_metadata_of(trainer.model_card())
    assert "datasets" not in meta and "base_model" not in meta
    assert meta["tags"] == ["tiltmatch", "masked-diffusion", "dtm"]


def card_metadata_of(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])
