"""Data-parallel training on CPU (gloo): 2 processes equal 1 with the same global batch.

The two-process part runs this file as a script under ``torchrun`` (what
``accelerate launch`` runs underneath) and compares what the ranks wrote. To
make one process and two comparable, the rollouts are fixed (no sampling) and
the masked states are drawn per row from the row itself, so a row's loss term
does not depend on which rank holds it; the model is float64 so that AdamW's
sign-like first steps cannot amplify summation-order noise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_OVERRIDES
from torch.distributed.tensor import DTensor

from tiltmatch.baselines.rejection import RejectionObjective, RejectionOptions
from tiltmatch.batch import RolloutBatch
from tiltmatch.config import build_config
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.states import States, random_mask_states
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.rewards import RewardFunction
from tiltmatch.sampling.sampler import left_pad
from tiltmatch.tasks.maze.task import MazeTask
from tiltmatch.training.distributed import (
    DistributedContext,
    FSDPSettings,
    close_process_group,
    fsdp_settings_from_env,
    process_context,
    rank_seed,
    shard,
    unshard,
)
from tiltmatch.training.lora import LoRAPair
from tiltmatch.training.pair import CopiedPair
from tiltmatch.training.parallel import (
    DataParallel,
    Sharded,
    SingleProcess,
    full_tensors,
    make_parallel,
    shard_module,
)
from tiltmatch.training.pretrain import char_codec_for
from tiltmatch.training.trainer import CHECKPOINT, Trainer

ROOT = Path(__file__).resolve().parents[1]
SPEC = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
GLOBAL_PROMPTS, GROUP, UPDATES = 4, 2, 3
# The suite's tiny run (conftest.py is importable by name here and under torchrun), with
# 5 evaluation examples so that 2 ranks get uneven shares.
TINY = [*TINY_OVERRIDES, "eval.examples=5"]


def row_seeded_states(responses: torch.Tensor, mask_token_id: int) -> States:
    """Random-mask states whose state of a row is seeded by the row's own tokens."""
    parts = []
    for row in responses:
        weights = torch.arange(1, row.numel() + 1)
        g = torch.Generator().manual_seed(int((row * weights).sum()))
        parts.append(random_mask_states(row[None], mask_token_id, g))
    return States(*(torch.cat([getattr(s, f) for s in parts]) for f in States.__annotations__))


class RowSeededDTM(DTMObjective):
    """DTM whose random-mask state of a row is seeded by the row's own tokens."""

    def states(self, batch: RolloutBatch, generator: torch.Generator) -> States:
        return row_seeded_states(batch.responses, self.mask_token_id)


class RowSeededRejection(RejectionObjective):
    """Rejection fine-tuning with :func:`row_seeded_states`."""

    def states(self, batch: RolloutBatch, generator: torch.Generator) -> States:
        return row_seeded_states(batch.responses, self.mask_token_id)


#: Rewards of the rejection run: with min_reward 0.5, rank 0's two groups keep their best
#: samples and rank 1's two groups keep nothing.
REJECTION_REWARDS = torch.tensor([0.9, 0.2, 0.1, 0.7, 0.3, 0.1, 0.2, 0.4], dtype=torch.float64)


def fixed_rollouts(
    rank: int, world: int, length: int, rewards: torch.Tensor | None = None
) -> RolloutBatch:
    """The same 4 prompts x 2 completions everywhere; rank ``rank`` holds its contiguous share."""
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 11, (n,), generator=g).tolist() for n in (5, 9, 7, 6)]
    responses = torch.randint(3, 11, (GLOBAL_PROMPTS * GROUP, length), generator=g)
    drawn = torch.rand(GLOBAL_PROMPTS * GROUP, generator=g)
    rewards = drawn if rewards is None else rewards
    per = GLOBAL_PROMPTS // world
    keep = range(rank * per, (rank + 1) * per)
    rows = torch.tensor([p * GROUP + j for p in keep for j in range(GROUP)])
    ids, mask = left_pad([prompts[p] for p in keep for _ in range(GROUP)], pad_token_id=0)
    return RolloutBatch(ids, mask, responses[rows], rewards[rows], GROUP)


class FixedRollouts:
    """A rollout worker that hands out one fixed batch, whatever it is asked to sample."""

    def __init__(self, batch: RolloutBatch, reward: RewardFunction) -> None:
        self.batch, self.reward = batch, reward

    def rollout(
        self, denoiser: Any, examples: Any, group_size: int, generator: torch.Generator
    ) -> RolloutBatch:
        assert group_size == self.batch.group_size
        return self.batch


def equivalence_run(
    context: DistributedContext, out: Path, rejection: bool = False
) -> dict[str, torch.Tensor]:
    """3 updates of 2 accumulated micro-batches, global micro-batch = all 4 prompts.

    ``rejection``: rejection fine-tuning with ``min_reward=0.5`` on
    :data:`REJECTION_REWARDS` (rank 1 of 2 keeps nothing), instead of DTM.
    """
    per = GLOBAL_PROMPTS // context.world_size
    config = build_config(
        overrides=[
            *TINY,
            f"train.prompts_per_batch={per}",
            f"train.buffer_prompts={per}",
            "train.refresh_prompts=0",
            "train.gradient_accumulation_steps=2",
            "train.learning_rate=0.01",
            "train.weight_decay=0.1",
            "train.max_grad_norm=0.5",  # clipping acts on the averaged gradient
            "dtm.steps_per_h=8",
        ]
    )
    task = MazeTask()
    codec = char_codec_for(task)
    model = tiny_denoiser(codec.vocab_size, SPEC, seed=0).double()
    pair = CopiedPair(MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id))
    objective: DTMObjective | RejectionObjective = RowSeededDTM(config.dtm, codec.mask_token_id)
    if rejection:
        objective = RowSeededRejection(RejectionOptions(min_reward=0.5), codec.mask_token_id)
    parallel = make_parallel(context)
    trainer = Trainer(config, task, codec, pair, objective, out, quiet=True, parallel=parallel)
    assert isinstance(trainer.parallel, DataParallel) == (context.world_size > 1)
    assert isinstance(trainer.parallel, Sharded) == (context.fsdp is not None)
    rewards = REJECTION_REWARDS if rejection else None
    batch = fixed_rollouts(context.rank, context.world_size, task.response_length, rewards)
    trainer.worker = FixedRollouts(batch, trainer.worker.reward)  # type: ignore[assignment]
    trainer._begin_stage()
    for _ in range(UPDATES):
        trainer._update()
    return whole(pair.student.state_dict())


def whole(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies; FSDP shards gathered into whole tensors (collective)."""
    return {k: v.detach().clone() for k, v in full_tensors(tensors).items()}


def resume_run(context: DistributedContext, out: Path, lora: bool = False) -> dict:
    """Real sampling, refreshes, a stage end with sharded evaluation; resume from update 2.

    ``lora``: student and teacher as two adapters of one model (one sharded model
    under FSDP), with 5 evaluation examples over 2 ranks (uneven shares).
    """
    import torch.distributed as dist

    config = build_config(overrides=[*TINY, *(["lora.r=4", "lora.alpha=8"] if lora else [])])
    task = MazeTask()
    codec = char_codec_for(task)

    def build(folder: Path) -> Trainer:
        torch.manual_seed(config.seed)
        model = tiny_denoiser(codec.vocab_size, SPEC, seed=config.seed)
        if lora:
            pair = LoRAPair.from_config(config, model, codec.mask_token_id, codec.pad_token_id)
        else:
            pair = CopiedPair(MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id))
        objective = DTMObjective(config.dtm, codec.mask_token_id)
        return Trainer(config, task, codec, pair, objective, folder, True, make_parallel(context))

    a = build(out / "a")
    a.train(max_updates=2)
    if context.is_main:
        shutil.copytree(out / "a" / CHECKPOINT, out / "b" / CHECKPOINT)
    dist.barrier()
    a.train(max_updates=5)  # through the stage end at update 4 (evaluation, log, checkpoint)
    b = build(out / "b")
    b.load()
    b.train(max_updates=5)
    drop = ("stage_seconds", "wall_seconds")
    groups = a.pair.state_dict()
    return {
        "a": whole(groups["student"]),
        "a_teacher": whole(groups["teacher"]),
        "b": whole(b.pair.state_dict()["student"]),
        "saved": a.parallel.student_weights_to_save(a.pair),
        "sharded": any(isinstance(v, DTensor) for v in groups["student"].values()),
        "history_a": [{k: v for k, v in r.items() if k not in drop} for r in a.history],
        "history_b": [{k: v for k, v in r.items() if k not in drop} for r in b.history],
        "rollouts": a.phase.rollouts,
    }


def worker(out: Path) -> None:
    """One rank of the two-process run (``torchrun ... test_distributed.py OUT``)."""
    torch.set_num_threads(1)
    context = process_context(cpu=True)
    rank = context.rank
    torch.save(equivalence_run(context, out / "equivalence"), out / f"equivalence_{rank}.pt")
    rejected = equivalence_run(context, out / "rejection", rejection=True)
    torch.save(rejected, out / f"rejection_{rank}.pt")
    torch.save(resume_run(context, out / "resume"), out / f"resume_{rank}.pt")
    if context.fsdp is not None:
        torch.save(resume_run(context, out / "lora", lora=True), out / f"lora_{rank}.pt")
    close_process_group()  # exiting with a live gloo group can abort at shutdown


#: what `accelerate launch --config_file configs/accelerate/fsdp.yaml` exports (checked below)
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}


#: the most one two-process launch may take before it counts as hung
LAUNCH_SECONDS = 300


def launch(out: Path, extra_env: dict[str, str]) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra_env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*cmd, __file__, str(out)], env=env, stdout=PIPE, stderr=PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: torchrun then stops its workers (killed alone, it would leave
        # the ranks waiting on each other, holding the pipes open).
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=120)
        pytest.fail(f"torchrun hung (stopped after {LAUNCH_SECONDS} s):\n{stderr[-6000:]}")
    if proc.returncode:
        tail = f"{stdout[-3000:]}\n{stderr[-6000:]}"
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{tail}")
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    return launch(tmp_path_factory.mktemp("ddp"), {})


@pytest.fixture(scope="module")
def two_sharded_ranks(tmp_path_factory) -> Path:
    return launch(tmp_path_factory.mktemp("fsdp"), FSDP_ENV)


LAUNCHES = ["two_ranks", "two_sharded_ranks"]  # DDP, FSDP


@pytest.mark.parametrize("launch_name", LAUNCHES)
def test_two_processes_equal_one_with_the_same_global_batch(launch_name, request, tmp_path):
    launched = request.getfixturevalue(launch_name)
    single = equivalence_run(DistributedContext(), tmp_path)
    initial = tiny_denoiser(11, SPEC, seed=0).double().state_dict()
    ranks = [torch.load(launched / f"equivalence_{r}.pt") for r in (0, 1)]
    assert any(not torch.equal(v, initial[k.removeprefix("model.")]) for k, v in single.items())
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicas stay identical
        assert torch.allclose(ranks[0][key], value, rtol=0, atol=1e-5), key


@pytest.mark.parametrize("launch_name", LAUNCHES)
def test_a_rank_that_keeps_nothing_still_joins_the_update(launch_name, request, tmp_path):
    """Rejection fine-tuning where rank 1's micro-batches keep no sample: the rank still runs
    its (collective, under FSDP) forward and backward, with zero weight, so the launch
    finishes (within launch()'s timeout) and equals one process on the global batch."""
    launched = request.getfixturevalue(launch_name)
    single = equivalence_run(DistributedContext(), tmp_path, rejection=True)
    initial = tiny_denoiser(11, SPEC, seed=0).double().state_dict()
    ranks = [torch.load(launched / f"rejection_{r}.pt") for r in (0, 1)]
    assert any(not torch.equal(v, initial[k.removeprefix("model.")]) for k, v in single.items())
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.allclose(ranks[0][key], value, rtol=0, atol=1e-5), key


@pytest.mark.parametrize("launch_name", LAUNCHES)
def test_resume_restores_every_rank(launch_name, request) -> None:
    from tiltmatch.training.checkpoint import load_checkpoint

    two_ranks = request.getfixturevalue(launch_name)
    sharded = launch_name == "two_sharded_ranks"
    ranks = [torch.load(two_ranks / f"resume_{r}.pt") for r in (0, 1)]
    for r in ranks:
        assert r["sharded"] == sharded
        for key, value in r["a"].items():
            assert torch.equal(value, r["b"][key]), key
            assert torch.equal(value, ranks[0]["a"][key]), key
        assert r["history_a"] == r["history_b"] == ranks[0]["history_a"]
        if sharded:  # the final save gets whole tensors, gathered on every rank
            saved = {f"model.{k}": v for k, v in r["saved"].items()}  # the inner model's keys
            assert saved.keys() == r["a"].keys()
            assert all(torch.equal(saved[k], v) for k, v in r["a"].items())
        else:
            assert r["saved"] is None
    record = ranks[0]["history_a"][0]
    assert "eval_reward" in record and record["stage"] == 0
    # Rollouts of the whole job: each rank fills 4 prompts x 2, then refreshes 2 x 2 at update 2.
    assert ranks[0]["rollouts"] == 2 * (4 * 2 + 2 * 2) + 2 * (4 * 2)
    _, objects, meta = load_checkpoint(two_ranks / "resume" / "a" / CHECKPOINT)
    assert meta["world_size"] == 2 and len(objects["ranks"]) == 2
    states = [r["rng"]["generator"] for r in objects["ranks"]]
    assert not torch.equal(states[0], states[1])  # each rank draws its own randomness
    log = (two_ranks / "resume" / "a" / "stages.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["stage"] == 0  # rank 0 alone wrote it


def test_fsdp_shards_one_lora_model_and_resumes_exactly(two_sharded_ranks) -> None:
    ranks = [torch.load(two_sharded_ranks / f"lora_{r}.pt") for r in (0, 1)]
    for r in ranks:
        assert r["sharded"]
        for key, value in r["a"].items():
            assert torch.equal(value, r["b"][key]), key  # resumed = uninterrupted
            assert torch.equal(value, ranks[0]["a"][key]), key  # replicas agree
        assert r["history_a"] == r["history_b"] == ranks[0]["history_a"]
        # 5 evaluation examples over 2 ranks: padded shares, every example scored once.
        assert "eval_reward" in r["history_a"][0]
    # The teacher adapter was refreshed at the stage end (it starts equal to the base: B = 0).
    teacher = ranks[0]["a_teacher"]
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in teacher.items())
    # The final save gathers the student adapter, under PEFT's own parameter names.
    saved = ranks[0]["saved"]
    assert {".".join(s for s in k.split(".") if s != "student") for k in saved} == set(
        ranks[0]["a"]
    )


def test_accelerate_launch_with_the_fsdp_file_trains_and_saves_whole_adapters(tmp_path) -> None:
    """The user's path: `accelerate launch --config_file fsdp.yaml -m tiltmatch.cli train`."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    sets = [*TINY, "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2"]
    sets += ["model.intermediate_size=64", "lora.r=4", "lora.alpha=8"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2"]
    config_file = str(ROOT / "configs" / "accelerate" / "fsdp.yaml")
    command = [*launcher, "--config_file", config_file, "-m", "tiltmatch.cli", "train"]
    command += ["--out", str(out), "--quiet", *(a for o in sets for a in ("--set", o))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert len((out / "stages.jsonl").read_text().splitlines()) == 2  # rank 0 alone logged
    # A LoRA run on a fresh tiny model has no base folder to point at: its student is saved
    # merged into its base, whole (issue 22), and differs from the seeded base where trained.
    saved = load_file(out / "final" / "model.safetensors")
    assert not [k for k in saved if "lora_" in k]
    down = saved["model.layers.0.mlp.down_proj.weight"]
    spec = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    base = tiny_denoiser(char_codec_for(MazeTask()).vocab_size, spec, seed=0).state_dict()
    assert down.shape == (32, 64) and not torch.equal(
        down, base["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_single_process_needs_no_accelerate(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importing it would now fail
    context = process_context(cpu=True)
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    config = build_config(overrides=TINY)
    task = MazeTask()
    codec = char_codec_for(task)
    model = tiny_denoiser(codec.vocab_size, SPEC, seed=0)
    pair = CopiedPair(MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id))
    objective = DTMObjective(config.dtm, codec.mask_token_id)
    parallel = make_parallel(context)
    trainer = Trainer(config, task, codec, pair, objective, tmp_path, parallel=parallel)
    assert type(trainer.parallel) is SingleProcess
    assert trainer.parallel.is_main
    close_process_group()  # no group: nothing to close, nothing raised


def fsdp_launch_env(config_file: Path) -> dict[str, str]:
    """The environment ``accelerate launch --config_file F`` gives an FSDP process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, _, _ = _validate_launch_command(args)  # accelerate launch's own steps (private API)
    return prepare_multi_gpu_env(args)


def test_fsdp_config_file_gives_the_tested_settings(monkeypatch) -> None:
    env = fsdp_launch_env(ROOT / "configs" / "accelerate" / "fsdp.yaml")
    assert {k: env[k] for k in FSDP_ENV} == FSDP_ENV  # what the two-process FSDP test runs
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    # No class named: each model's own decoder layers (models.family.decoder_layer_classes).
    assert fsdp_settings_from_env() == FSDPSettings(True, ())
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")  # ZeRO-2-like
    assert not fsdp_settings_from_env().reshard_after_forward


def test_unsupported_launches_are_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(NotImplementedError, match=r"DeepSpeed.*fsdp\.yaml"):
        process_context(cpu=True)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    for key, value in FSDP_ENV.items():
        monkeypatch.setenv(key, value)
    for key, value, named in (
        ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params"),
        ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "fsdp_auto_wrap_policy=SIZE_BASED_WRAP"),
    ):
        monkeypatch.setenv(key, value)
        with pytest.raises(NotImplementedError, match=named):
            fsdp_settings_from_env()
        monkeypatch.setenv(key, FSDP_ENV.get(key, "false"))
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.delenv("FSDP_RESHARD_AFTER_FORWARD")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "SHARD_GRAD_OP")  # FSDP1's name for ZeRO-2
    assert not fsdp_settings_from_env().reshard_after_forward
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")
    with pytest.raises(NotImplementedError, match="NO_SHARD"):
        fsdp_settings_from_env()


def test_a_4bit_base_is_not_sharded(monkeypatch, tmp_path) -> None:
    import tiltmatch.training.runner as runner

    sharded = DistributedContext(rank=0, world_size=2, fsdp=FSDPSettings())
    monkeypatch.setattr(runner, "process_context", lambda: sharded)
    sets = [*TINY, f"model.base={tmp_path}", "model.load_in_4bit=true", "lora.r=4"]
    with pytest.raises(ValueError, match=r"load_in_4bit.*ddp\.yaml"):
        runner.build_trainer(build_config(overrides=sets), tmp_path / "run")


def test_layer_classes_default_to_the_models_own(monkeypatch) -> None:
    """No class named: every family's decoder layers become the FSDP units."""
    import tiltmatch.training.parallel as parallel

    wrapped: list[str] = []
    monkeypatch.setattr(
        "torch.distributed.fsdp.fully_shard", lambda m, **_: wrapped.append(type(m).__name__)
    )
    for family in ("llada", "dream", "block_diffusion"):
        spec = TinyModelSpec(16, 2, 2, 32, family=family)
        model = tiny_denoiser(11, spec, seed=0)
        wrapped.clear()
        parallel.shard_module(model, FSDPSettings(True, ()))
        layer = {"llada": "LlamaDecoderLayer", "dream": "Qwen2DecoderLayer"}.get(
            family, "Qwen3DecoderLayer"
        )
        assert wrapped == [layer, layer, type(model).__name__]


def test_layer_class_must_match_a_module() -> None:
    model = tiny_denoiser(11, SPEC, seed=0)
    with pytest.raises(ValueError, match=r"GPT2Block.*LlamaDecoderLayer"):
        shard_module(model, FSDPSettings(True, ("GPT2Block",)))


def test_shards_cover_everything_once() -> None:
    items = list(range(11))
    for world in (1, 2, 3, 8, 13):
        shards = [shard(items, r, world) for r in range(world)]
        assert sorted(x for s in shards for x in s) == items
        assert unshard(shards) == items
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(8)}) == 8


# -- accelerate config files ---------------------------------------------------------------

ACCELERATE_CONFIGS = {
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed_zero2.yaml": "DEEPSPEED",
}


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_files_are_valid(name) -> None:
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ROOT / "configs" / "accelerate" / name
    config = ClusterConfig.from_yaml_file(str(path))  # what accelerate launch reads
    assert config.distributed_type.value == ACCELERATE_CONFIGS[name]
    assert config.num_processes == 8
    # tiltmatch's DDP and FSDP paths take the dtype from model.dtype, not accelerate's autocast.
    assert config.mixed_precision == ("bf16" if name == "deepspeed_zero2.yaml" else "no")
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)  # accelerate launch's own check (private API)
    assert (args.use_fsdp, args.use_deepspeed) == (
        name == "fsdp.yaml",
        name != "ddp.yaml" and name != "fsdp.yaml",
    )
    # Every key of a plugin section must be a launch option, as accelerate maps them.
    options = {a.dest for a in parser._actions}
    raw = yaml.safe_load(path.read_text())
    for key in raw.get("fsdp_config", {}):
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in options, key
    for key in raw.get("deepspeed_config", {}):
        assert key in options, key
    if name == "fsdp.yaml":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2  # fully_shard, what tiltmatch.training.parallel runs
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # taken from the model
    if name == "deepspeed_zero2.yaml":
        assert raw["deepspeed_config"]["zero_stage"] == 2


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
