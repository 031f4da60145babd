"""Using a trained model: what a new user does, outside the package (a fresh interpreter):
train on a ``datasets.Dataset`` with a TRL-signature reward, save, reload with one call and
sample with one call; the same through ``tiltmatch train`` then ``tiltmatch generate``. And
the pieces: the record a saved folder carries, the geometry derived from a length, the
command's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tiltmatch
from tiltmatch.cli import main
from tiltmatch.config import ConfigError
from tiltmatch.generation.geometry import Geometry, derive_geometry, geometry_problem
from tiltmatch.generation.record import GenerationRecord, read_record
from tiltmatch.models.loading import shipped_model_dir

SRC = Path(tiltmatch.__file__).resolve().parents[1]
WORDS = ["cat", "dog", "owl", "bee"]


def fresh_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a new interpreter that imports this checkout's tiltmatch."""
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


NEW_USER_SCRIPT = textwrap.dedent(
    """
    import json
    import datasets
    import tiltmatch
    from tiltmatch import DTMArguments, DTMTrainer

    rows = [{"prompt": f"say {w}:", "word": w} for w in ["cat", "dog", "owl", "bee"]]
    train = datasets.Dataset.from_list(rows)

    def letters_of_word(prompts, completions, word, **kwargs):  # TRL's reward signature
        return [sum(ch in w for ch in c) / len(c) if c else 0.0 for c, w in zip(completions, word)]

    args = DTMArguments(
        output_dir="run", max_completion_length=6, num_generations=2,
        per_device_train_batch_size=4, buffer_prompts=2, refresh_prompts=1, refresh_every=1,
        a_end=4.0, h=2.0, steps_per_h=2, eval_examples=2, eval_samples_per_example=1,
        report_to="none", disable_tqdm=True,
        model_init_kwargs=dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
    )
    trainer = DTMTrainer(reward_funcs=letters_of_word, train_dataset=train, args=args)
    trainer.train()
    folder = trainer.save_model()

    model = tiltmatch.load_pretrained(folder)                         # one call
    completions = model.generate(["say cat:", "say owl:"], num_return_sequences=3, seed=1)
    again = tiltmatch.load_pretrained(folder).generate(
        ["say cat:", "say owl:"], num_return_sequences=3, seed=1)
    print(json.dumps({"folder": str(folder), "completions": completions, "again": again,
                      "alphabet": trainer.codec.alphabet}))
    """
)


def test_a_new_user_trains_saves_reloads_and_samples_in_a_fresh_interpreter(tmp_path):
    (tmp_path / "new_user.py").write_text(NEW_USER_SCRIPT)
    done = fresh_python(["new_user.py"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    completions = result["completions"]
    assert len(completions) == 6  # 2 prompts x 3, prompt by prompt
    assert completions == result["again"]  # a seed reproduces a draw
    assert all(len(c) <= 6 and set(c) <= set(result["alphabet"]) for c in completions)
    folder = tmp_path / result["folder"]
    card = (folder / "README.md").read_text()
    assert "tiltmatch.load_pretrained(" in card and "tiltmatch generate --model" in card
    record = read_record(folder)
    assert record.response_length == 6 and record.sampler["steps"] >= 1


def test_the_same_through_tiltmatch_train_then_tiltmatch_generate(tmp_path):
    (tmp_path / "rewards.py").write_text(
        "def letters_of_word(prompts, completions, word, **kwargs):\n"
        "    return [sum(ch in w for ch in c) / len(c) if c else 0.0\n"
        "            for c, w in zip(completions, word)]\n"
    )
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"say {w}:", "word": w}) + "\n" for w in WORDS)
    )
    sizes = [
        "task_options.response_length=6",
        "model.hidden_size=16",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.intermediate_size=32",
        "train.num_generations=2",
        "train.prompts_per_batch=2",
        "train.buffer_prompts=2",
        "train.refresh_prompts=1",
        "train.refresh_every=1",
        "dtm.a_end=4",
        "dtm.steps_per_h=2",
        "eval.examples=2",
        "eval.samples_per_example=1",
        "train.report_to=none",
    ]
    train = ["-m", "tiltmatch.cli", "train", "--dataset", "prompts.jsonl"]
    train += ["--reward", "rewards.py:letters_of_word", "--alphabet", "auto", "--out", "run"]
    train += ["--quiet", *[a for s in sizes for a in ("--set", s)]]
    done = fresh_python(train, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "tiltmatch generate --model run/final" in card
    # the default sampler (blocks of 8) does not divide 6 tokens: derived, not refused
    assert read_record(tmp_path / "run" / "final").sampler["block_length"] == 6
    generate = ["-m", "tiltmatch.cli", "generate", "--model", "run/final"]
    generate += ["--prompt", "say cat:", "--prompt", "say dog:", "--num-return-sequences", "2"]
    done = fresh_python(generate, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in lines] == [
        ("say cat:", 0),
        ("say cat:", 1),
        ("say dog:", 0),
        ("say dog:", 1),
    ]
    assert all(len(r["completion"]) <= 6 for r in lines)


def test_a_loaded_model_samples_what_the_trained_student_samples(tmp_path):
    from test_api import letters_of_word, tiny_args, word_rows

    from tiltmatch import DTMTrainer
    from tiltmatch.sampling.sampler import generate

    trainer = DTMTrainer(
        reward_funcs=letters_of_word, train_dataset=word_rows(), args=tiny_args(tmp_path / "r")
    )
    trainer.train()
    model = tiltmatch.load_pretrained(trainer.save_model(), device="cpu")
    student = trainer.trainer.pair.student
    for name, tensor in student.model.state_dict().items():
        assert torch.equal(tensor, model.model.state_dict()[name]), name
    config = model.sampling_config()
    assert (config.steps, config.block_length, config.temperature) == (4, 4, 1.0)
    codec = trainer.codec
    ids = [codec.encode_prompt("say cat:")] * 3
    direct = generate(
        student, ids, 4, config, torch.Generator().manual_seed(5), forbidden_token_ids=[0]
    )
    expected = [codec.decode_response(r.tolist()) for r in direct.responses]
    assert model.generate("say cat:", num_return_sequences=3, seed=5) == expected


def test_the_shipped_bases_sample_with_their_recorded_options():
    record = read_record(shipped_model_dir("countdown"))
    assert record.task == "countdown" and record.response_length == 12
    assert record.task_options["format"] == "char"
    config = record.sampling(record.length())
    assert (config.steps, config.block_length, config.temperature) == (8, 12, 1.0)
    # another length: the recorded tokens per step kept, the block fitted to the length
    config = record.sampling(record.length(6))
    assert (config.block_length, config.steps) == (6, 4)
    # a folder recording nothing samples with the published protocol
    blank = GenerationRecord()
    config = blank.sampling(blank.length(64))
    assert (config.block_length, config.steps, config.temperature) == (32, 32, 0.0)
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        blank.sampling(16, {"temprature": 1.0})


@pytest.mark.parametrize(
    ("length", "given", "preferred", "at", "expected"),
    [
        (32, (None, None), Geometry(8, 8), None, Geometry(8, 8)),  # the defaults fit: kept
        (12, (None, None), Geometry(8, 8), None, Geometry(6, 8)),
        (20, (None, None), Geometry(8, 8), None, Geometry(5, 8)),
        (4, (None, None), Geometry(8, 8), None, Geometry(4, 4)),
        (7, (None, None), Geometry(8, 8), None, Geometry(7, 7)),
        (24, (None, None), Geometry(12, 8), 12, Geometry(12, 16)),  # recorded 1.5 tokens/step
        (12, (3, None), Geometry(8, 8), None, Geometry(3, 8)),
        (12, (None, 5), Geometry(8, 8), None, Geometry(6, 5)),  # given: kept, checked later
    ],
)
def test_the_geometry_is_derived_from_the_length(length, given, preferred, at, expected):
    geometry = derive_geometry(length, *given, preferred=preferred, preferred_length=at)
    assert geometry == expected
    names = ("length", "block", "steps")
    if given == (None, None):
        assert geometry_problem(length, geometry, names) is None
    assert geometry_problem(12, Geometry(8, 8), names) == (
        "block 8 does not divide length 12 (it may be 1, 2, 3, 4, 6, 12; leave block unset "
        "to derive it)"
    )
    assert "steps 5 is not a multiple of the 2 blocks of 6 tokens (e.g. 4 or 6" in str(
        geometry_problem(12, Geometry(6, 5), names)
    )


def test_a_run_derives_its_sampler_and_refuses_a_given_one_in_its_own_words(tmp_path):
    from test_api import letters_of_word, tiny_args, word_rows

    from tiltmatch import DTMTrainer

    args = tiny_args(tmp_path / "a", max_completion_length=6, block_length=None)
    args.diffusion_steps = None
    trainer = DTMTrainer(reward_funcs=letters_of_word, train_dataset=word_rows(), args=args)
    assert (trainer.config.sampler.block_length, trainer.config.sampler.steps) == (6, 6)
    args = tiny_args(tmp_path / "b", max_completion_length=6, block_length=4)
    with pytest.raises(
        ConfigError, match=r"^block_length 4 does not divide max_completion_length 6"
    ):
        DTMTrainer(reward_funcs=letters_of_word, train_dataset=word_rows(), args=args)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--block-length", "5"], "--block-length 5 does not divide --max-new-tokens 8"),
        (["--steps", "3", "--block-length", "4"], "--steps 3 is not a multiple of the 2 blocks"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
        (["--num-return-sequences", "0"], "--num-return-sequences must be at least 1"),
        ([], "give --prompt TEXT"),
    ],
)
def test_generate_refuses_bad_flags_in_one_line_before_loading(capsys, flags, needle):
    prompt = [] if not flags else ["--prompt", "#S.G"]
    argv = ["generate", "--model", "shipped:maze", "--max-new-tokens", "8", *prompt, *flags]
    if flags[:2] == ["--max-new-tokens", "0"]:
        argv = ["generate", "--model", "shipped:maze", *prompt, *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tiltmatch generate: error: ") and needle in err
    assert len(err.splitlines()) == 1


def test_generate_reads_a_prompts_file_and_writes_through_a_destination(tmp_path, capsys):
    prompts = tmp_path / "mazes.txt"
    prompts.write_text("#S.G\n\n.S#G\n")
    out = tmp_path / "gen"
    argv = ["generate", "--model", "shipped:maze", "--prompts-file", str(prompts)]
    assert main([*argv, "--max-new-tokens", "8", "--device", "cpu", "--out", str(out)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in printed] == ["#S.G", ".S#G"]
    assert (out / "generations.jsonl").read_text().splitlines() == [json.dumps(r) for r in printed]
    assert main([*argv, "--out", str(out)]) == 2  # the folder is refused without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_the_packaged_test_sets_are_the_published_files() -> None:
    # tiltmatch/assets/data ships in the wheel (shared_data_dir's fallback after
    # $TILTMATCH_DATA_DIR): each file has the digest its README records, and equals the
    # shared copy beside the repository when there is one.
    import hashlib
    import re

    from tiltmatch.data import PACKAGED_DATA, PACKAGED_METHOD

    recorded = re.findall(r"([0-9a-f]{64})  (\S+)", (PACKAGED_DATA / "README.md").read_text())
    assert len(recorded) == 5
    for digest, name in recorded:
        assert hashlib.sha256((PACKAGED_DATA / name).read_bytes()).hexdigest() == digest, name
    shared = Path(tiltmatch.__file__).resolve().parents[3] / "shared"
    if (shared / "METHOD.md").is_file():
        assert PACKAGED_METHOD.read_text() == (shared / "METHOD.md").read_text()
