"""Data through ``datasets`` and every ``peft.LoraConfig`` field honoured or refused (issue 22,
item 7): a CSV's numbers reach the rewards as numbers, a JSON file holding an array is read,
and a LoRA setting the pair cannot follow is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_api import tiny_args

from tiltmatch import DTMTrainer
from tiltmatch.api import _lora_config
from tiltmatch.config import ConfigError
from tiltmatch.tasks.dataset import DatasetTask, load_prompt_rows

peft = pytest.importorskip("peft")
pytest.importorskip("datasets")


def answer_is_right(prompts, completions, answer, **columns):
    # A user's reward comparing numbers with ==: a CSV's "3" read as text would make every
    # int(completion) == answer false, and the run would silently score 0.
    return [
        1.0 if c.strip().isdigit() and int(c) == a else 0.0
        for c, a in zip(completions, answer, strict=True)
    ]


def test_csv_numbers_reach_the_reward_as_numbers(tmp_path: Path) -> None:
    data = tmp_path / "sums.csv"
    data.write_text("prompt,answer,weight\n1+2=,3,0.5\n2+2=,4,\n")
    rows, _ = load_prompt_rows(str(data))
    assert rows == [
        {"prompt": "1+2=", "answer": 3, "weight": 0.5},
        {"prompt": "2+2=", "answer": 4, "weight": None},
    ]
    task = DatasetTask(train=str(data), rewards=answer_is_right)
    first, second = task.train_examples
    assert task.reward("3", first) == 1.0 and task.reward("3", second) == 0.0


def test_a_json_array_a_jsonl_and_a_parquet_file(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}]
    (tmp_path / "array.json").write_text(json.dumps(rows))
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "table.parquet"))
    for name in ("array.json", "lines.jsonl", "table.parquet"):
        assert load_prompt_rows(str(tmp_path / name))[0] == rows, name


def test_a_file_datasets_cannot_read_still_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    from tiltmatch.data import DatasetError

    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON"):
        load_prompt_rows(str(bad))


def test_lora_config_fields_are_honoured() -> None:
    given = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj"],
        use_rslora=True,
        use_dora=True,
        task_type="CAUSAL_LM",
    )
    ours = _lora_config(given)
    assert ours is not None
    assert (ours.r, ours.alpha, ours.dropout) == (4, 16.0, 0.1)
    assert (sorted(ours.target_modules), ours.use_rslora, ours.use_dora) == (
        ["k_proj", "q_proj"],
        True,
        True,
    )
    # PEFT's own default targets for these architectures, not the lora: section's
    assert sorted(_lora_config(peft.LoraConfig(r=4)).target_modules) == ["q_proj", "v_proj"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modules_to_save", ["lm_head"]),
        ("bias", "all"),
        ("init_lora_weights", "pissa"),
        ("layers_to_transform", [0]),
        ("rank_pattern", {"q_proj": 2}),
        ("task_type", "SEQ_CLS"),
    ],
)
def test_lora_config_fields_the_pair_cannot_follow_are_refused(field, value) -> None:
    with pytest.raises(ConfigError, match=rf"^peft_config\.{field}="):
        _lora_config(peft.LoraConfig(r=4, **{field: value}))


def test_dora_and_rslora_train_in_the_pair(tmp_path: Path) -> None:
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True, use_rslora=True
    )
    args = tiny_args(tmp_path / "r", max_completion_length=4)
    trainer = DTMTrainer(
        reward_funcs=lambda prompts, completions, **c: [float(len(c)) for c in completions],
        train_dataset=[{"prompt": "abc"}] * 4,
        args=args,
        peft_config=lora,
    )
    pair = trainer.trainer.pair
    config = pair.peft_model.peft_config["student"]
    assert config.use_dora and config.use_rslora
    names = [n for n, _ in pair.peft_model.named_parameters() if "lora_magnitude_vector" in n]
    assert names  # DoRA's magnitudes, copied with the adapter's other weights
    before = {k: v.clone() for k, v in pair._params["student"].items()}
    trainer.train()
    after = pair._params["student"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the teacher was refreshed from the student at the stage boundary, magnitudes included
    magnitude = next(k for k in after if "lora_magnitude_vector" in k)
    assert torch.equal(pair._params["teacher"][magnitude], after[magnitude])
