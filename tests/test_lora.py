"""LoRAPair: two adapters on one frozen base; the traps of adapter switching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiltmatch.config import LoRAConfig, ModelConfig, build_config
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.models.quantisation import bitsandbytes_available, load_4bit_base, prepare_base_model
from tiltmatch.tasks import get_task
from tiltmatch.tasks.maze.task import MazeTask
from tiltmatch.training.checkpoint import load_checkpoint, save_checkpoint
from tiltmatch.training.lora import LoRAPair
from tiltmatch.training.pretrain import char_codec_for
from tiltmatch.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT reads a renamed flag

VOCAB, PAD, MASK = 24, 0, 1
SPEC = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
SETTINGS = LoRAConfig(r=4, alpha=8.0, dropout=0.0)
TARGETS = SETTINGS.target_modules
L = 4  # response length


def make_pair(seed: int = 1, settings: LoRAConfig = SETTINGS, **kwargs) -> LoRAPair:
    model = tiny_denoiser(VOCAB, SPEC, seed=0)
    torch.manual_seed(seed)  # adapter initialisation
    return LoRAPair(model, MASK, PAD, settings, **kwargs)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, VOCAB, (3, 9), generator=g)
    ids[:, -L:][:, ::2] = MASK
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = PAD, 0  # one left-padded row
    targets = torch.randint(2, VOCAB, (3, L), generator=g)
    return ids, mask, targets


def logits(denoiser: MaskedDenoiser) -> torch.Tensor:
    ids, mask, _ = batch()
    was = denoiser.training
    denoiser.eval()
    with torch.no_grad():
        out = denoiser(ids, mask, L)
    denoiser.train(was)
    return out


def loss_with_teacher_between(pair: LoRAPair) -> torch.Tensor:
    """As the c-DTM loss does: student forward, then teacher and reference forwards, then loss."""
    ids, mask, targets = batch()
    pair.student.train()
    student = pair.student(ids, mask, L)
    teacher = pair.teacher(ids, mask, L)
    pair.reference()(ids, mask, L)
    ce = torch.nn.functional.cross_entropy(student.reshape(-1, VOCAB), targets.reshape(-1))
    return ce + (student - teacher).pow(2).mean()


def train_steps(pair: LoRAPair, steps: int = 3) -> None:
    opt = torch.optim.AdamW(list(pair.trainable_parameters()), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss_with_teacher_between(pair).backward()
        opt.step()
        pair.after_update()


def adapter_numel() -> int:
    h, i = SPEC.hidden_size, SPEC.intermediate_size
    shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
    return SPEC.num_layers * sum(SETTINGS.r * (a + b) for a, b in shapes.values())


def test_one_frozen_base_two_adapters() -> None:
    base_numel = sum(p.numel() for p in tiny_denoiser(VOCAB, SPEC, seed=0).parameters())
    pair = make_pair()
    views = [pair.student, pair.teacher, pair.reference()]
    unique = {id(p): p for v in views for p in v.parameters()}
    assert sum(p.numel() for p in unique.values()) == base_numel + 2 * adapter_numel()
    trainable = list(pair.trainable_parameters())
    assert sum(p.numel() for p in trainable) == adapter_numel()
    state = pair.state_dict()
    assert set(state) == {"student", "teacher"}
    assert all("lora_" in k for group in state.values() for k in group)
    assert sum(t.numel() for group in state.values() for t in group.values()) == 2 * adapter_numel()
    targeted = {k.split(".")[-3] for k in state["student"]}
    assert targeted == set(TARGETS)


def test_only_the_student_adapter_trains_whatever_forward_ran() -> None:
    pair = make_pair()
    student_ids = {id(p) for p in pair.trainable_parameters()}
    loss_with_teacher_between(pair).backward()
    for name, p in pair.peft_model.named_parameters():
        assert p.requires_grad == (id(p) in student_ids), name
        assert (p.grad is not None) == (id(p) in student_ids), name
    assert any(p.grad.abs().sum() > 0 for p in pair.trainable_parameters())


def test_student_updates_leave_teacher_reference_and_base_alone() -> None:
    original = tiny_denoiser(VOCAB, SPEC, seed=0)
    base_logits = logits(MaskedDenoiser(original, MASK, PAD))
    pair = make_pair()
    base_before = {k: v.clone() for k, v in pair.peft_model.named_parameters() if "lora_" not in k}
    teacher_before, student_before = logits(pair.teacher), logits(pair.student)
    assert torch.allclose(teacher_before, base_logits, atol=1e-6)  # B = 0 at initialisation
    train_steps(pair)
    assert torch.equal(logits(pair.teacher), teacher_before)
    assert not torch.allclose(logits(pair.student), student_before, atol=1e-4)
    assert torch.allclose(logits(pair.reference()), base_logits, atol=1e-6)
    for k, v in pair.peft_model.named_parameters():
        if "lora_" not in k:
            assert torch.equal(v, base_before[k]), k


def test_refresh_makes_the_teacher_the_student() -> None:
    pair = make_pair()
    train_steps(pair)
    assert not torch.allclose(logits(pair.teacher), logits(pair.student), atol=1e-4)
    pair.refresh_teacher()
    assert torch.equal(logits(pair.teacher), logits(pair.student))


def test_ema_teacher() -> None:
    decay = 0.5
    pair = make_pair(ema_decay=decay)
    ema = {k: v.clone() for k, v in pair.state_dict()["student"].items()}
    opt = torch.optim.SGD(list(pair.trainable_parameters()), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss_with_teacher_between(pair).backward()
        opt.step()
        pair.after_update()
        for k, v in pair.state_dict()["student"].items():
            ema[k] = decay * ema[k] + (1 - decay) * v
    pair.refresh_teacher()
    state = pair.state_dict()
    for k, v in state["teacher"].items():
        assert torch.allclose(v, ema[k], atol=1e-6), k
        assert torch.equal(state["ema"][k], state["student"][k])  # the EMA restarts


def test_state_dict_round_trip_through_a_checkpoint(tmp_path) -> None:
    pair = make_pair(ema_decay=0.9)
    train_steps(pair, 2)
    pair.refresh_teacher()
    train_steps(pair, 1)
    save_checkpoint(tmp_path / "ckpt", pair.state_dict(), {}, {})
    tensors, _, _ = load_checkpoint(tmp_path / "ckpt")
    fresh = make_pair(seed=99, ema_decay=0.9)  # different adapter initialisation
    assert not torch.equal(logits(fresh.student), logits(pair.student))
    fresh.load_state_dict(tensors)
    for view in ("student", "teacher"):
        assert torch.equal(logits(getattr(fresh, view)), logits(getattr(pair, view)))
    for k, v in pair.state_dict()["ema"].items():
        assert torch.equal(fresh.state_dict()["ema"][k], v)
    with pytest.raises(KeyError, match="student"):
        fresh.load_state_dict({**tensors, "student": {"nope": torch.zeros(1)}})


def test_activation_checkpointing_survives_adapter_switching() -> None:
    """The student's recomputation in backward runs after the teacher's forward."""
    settings = LoRAConfig(r=4, alpha=8.0, dropout=0.1)  # dropout: the recompute replays RNG
    grads = []
    for checkpointing in (False, True):
        pair = make_pair(settings=settings, gradient_checkpointing=checkpointing)
        base = pair.peft_model.get_base_model()
        assert base.is_activation_checkpointing == checkpointing
        train_steps(pair, 1)  # make the student differ from the teacher first
        for p in pair.trainable_parameters():
            p.grad = None
        torch.manual_seed(3)
        loss_with_teacher_between(pair).backward()
        grads.append([p.grad.clone() for p in pair.trainable_parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        assert torch.allclose(plain, recomputed, atol=1e-6)


def test_bfloat16_base_with_float32_adapters() -> None:
    model = prepare_base_model(tiny_denoiser(VOCAB, SPEC, seed=0), ModelConfig(dtype="bfloat16"))
    torch.manual_seed(1)
    pair = LoRAPair(model, MASK, PAD, SETTINGS)
    base = [p for k, p in pair.peft_model.named_parameters() if "lora_" not in k]
    assert all(p.dtype == torch.bfloat16 for p in base)
    assert all(p.dtype == torch.float32 for p in pair.trainable_parameters())
    train_steps(pair, 1)
    assert torch.isfinite(logits(pair.student)).all()


@pytest.mark.skipif(bitsandbytes_available(), reason="bitsandbytes is installed")
def test_4bit_base_needs_bitsandbytes(tmp_path) -> None:
    with pytest.raises(ImportError, match="bitsandbytes"):
        load_4bit_base(tmp_path)


def test_lora_pair_in_the_trainer(tiny_overrides, tmp_path) -> None:
    config = build_config(overrides=[*tiny_overrides, "lora.r=4", "lora.alpha=8"])
    task = MazeTask()
    codec = char_codec_for(task)
    small = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)

    def build(out):
        torch.manual_seed(config.seed)
        model = tiny_denoiser(codec.vocab_size, small, seed=config.seed)
        pair = LoRAPair.from_config(config, model, codec.mask_token_id, codec.pad_token_id)
        objective = DTMObjective(config.dtm, codec.mask_token_id)
        return Trainer(config, task, codec, pair, objective, out, quiet=True)

    trainer = build(tmp_path / "a")
    before = {k: v.clone() for k, v in trainer.pair.state_dict()["student"].items()}
    trainer.train(max_updates=3)
    trainer.save()
    after = trainer.pair.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in after["student"].items())
    resumed = build(tmp_path / "b")
    resumed.load(tmp_path / "a" / "checkpoint")
    for group, tensors in resumed.pair.state_dict().items():
        for k, v in tensors.items():
            assert torch.equal(v, after[group][k]), (group, k)


# -- the LLaDA-8B recipes (configs/llada) --------------------------------------------------

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "llada").glob("*.yaml"))


def test_every_llada_recipe_validates() -> None:
    assert {p.stem for p in RECIPES} >= {"sudoku", "countdown", "gsm8k", "math500"}
    for path in RECIPES:
        config = build_config(path)
        task = get_task(config.task, **config.task_options)
        blocks, rest = divmod(task.response_length, config.sampler.block_length)
        assert rest == 0 and config.sampler.steps % blocks == 0, path.name
        assert config.lora is not None, path.name
        # a 4-bit base everywhere but ESPO's recipes (its authors train LoRA on bf16)
        assert config.model.load_in_4bit or config.method == "espo", path.name
        assert config.model.dtype == "bfloat16" and config.model.base, path.name


# The published recipes' values, reward, micro-batch and EMA: tests/test_recipes.py.


def perturbed_teacher(pair: LoRAPair) -> None:
    """Make the teacher adapter differ from the student's (both start equal to the base)."""
    groups = pair.state_dict()
    g = torch.Generator().manual_seed(7)
    noisy = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in groups["teacher"].items()}
    pair.load_state_dict({**groups, "teacher": noisy})


def assert_student_trains_alone(pair: LoRAPair) -> None:
    """A training step reaches the student adapter's parameters and nothing else."""
    for p in pair.peft_model.parameters():
        p.grad = None
    loss_with_teacher_between(pair).backward()
    student = {id(p) for p in pair.trainable_parameters()}
    for name, p in pair.peft_model.named_parameters():
        assert (p.grad is not None) == (id(p) in student), name
    assert any(p.grad.abs().sum() > 0 for p in pair.trainable_parameters())


def test_sampling_through_the_teacher_switches_adapters_once(monkeypatch) -> None:
    from contextlib import nullcontext

    from tiltmatch.sampling.sampler import SamplingConfig, generate
    from tiltmatch.training.lora import AdapterDenoiser

    pair = make_pair()
    perturbed_teacher(pair)  # teacher != student, so a wrong adapter shows in the samples
    student_before, teacher_before = logits(pair.student), logits(pair.teacher)
    assert not torch.allclose(student_before, teacher_before, atol=1e-3)
    prompts = [[2, 3, 4], [5, 6, 7, 8, 9]]
    config = SamplingConfig(steps=8, block_length=4, remasking="low_confidence")
    switches = []  # PEFT's own adapter switch, the cost a session saves
    original = pair.peft_model.set_adapter
    monkeypatch.setattr(
        pair.peft_model, "set_adapter", lambda name: (switches.append(name), original(name))
    )
    held = generate(pair.teacher, prompts, 8, config, torch.Generator().manual_seed(0))
    assert switches == ["teacher", "student"]  # once in, once out, for 8 forwards
    monkeypatch.setattr(AdapterDenoiser, "session", lambda self: nullcontext())
    switches.clear()
    each = generate(pair.teacher, prompts, 8, config, torch.Generator().manual_seed(0))
    assert len(switches) == 16  # in and out around every forward
    assert torch.equal(held.responses, each.responses)  # the teacher's samples either way
    by_student = generate(pair.student, prompts, 8, config, torch.Generator().manual_seed(0))
    assert not torch.equal(held.responses, by_student.responses)
    # Afterwards every view gives its own adapter's outputs, and only the student trains.
    assert torch.equal(logits(pair.student), student_before)
    assert torch.equal(logits(pair.teacher), teacher_before)
    assert_student_trains_alone(pair)


def test_only_the_holding_view_runs_inside_a_session() -> None:
    pair = make_pair()
    perturbed_teacher(pair)
    ids, mask, _ = batch()
    student_before, teacher_before = logits(pair.student), logits(pair.teacher)
    pair.teacher.eval()
    with pair.teacher.session():
        with torch.no_grad():
            inside = pair.teacher(ids, mask, L)
        assert torch.equal(inside, teacher_before)  # the teacher's adapter, held
        with pytest.raises(RuntimeError, match="held by a sampling session"):
            pair.student(ids, mask, L)
        with pytest.raises(RuntimeError, match="held by a sampling session"):
            pair.reference()(ids, mask, L)
        second = pair.reference().session()
        with pytest.raises(RuntimeError, match="already holds a session"):
            second.__enter__()
    # The session is over: every view runs again with its own adapter, the student trains.
    assert torch.equal(logits(pair.student), student_before)
    assert torch.equal(logits(pair.teacher), teacher_before)
    with pair.reference().session():  # a new session may begin
        base = logits(pair.reference())
    original = MaskedDenoiser(tiny_denoiser(VOCAB, SPEC, seed=0), MASK, PAD)
    assert torch.allclose(base, logits(original), atol=1e-6)
    assert_student_trains_alone(pair)


@pytest.mark.parametrize("mode", ["cached", "cached+parallel"])
def test_teacher_session_samples_with_a_cache_of_its_own_adapter(mode) -> None:
    """The cache holds the teacher adapter's keys/values: with refresh every step the cached
    sampler equals the exact one through the teacher, and differs from the student's."""
    from tiltmatch.sampling.sampler import SamplingConfig, generate

    pair = make_pair()
    with torch.no_grad():
        for name, p in pair.peft_model.named_parameters():
            if "teacher" in name.split("."):
                p.add_(0.5 * torch.randn_like(p))
    prompts = [[2, 3, 4], [5, 6, 7, 8, 9]]
    exact = SamplingConfig(steps=8, block_length=4)
    one_per_step = {"threshold": 2.0} if "parallel" in mode else {}  # parallel: one per step
    cached = exact.model_copy(update={"mode": mode, "refresh_every": 1, **one_per_step})
    a = generate(pair.teacher, prompts, 8, exact, torch.Generator().manual_seed(0))
    b = generate(pair.teacher, prompts, 8, cached, torch.Generator().manual_seed(0))
    assert torch.equal(a.responses, b.responses)
    stale = cached.model_copy(update={"refresh_every": None})  # block-boundary refresh only
    c = generate(pair.teacher, prompts, 8, stale, torch.Generator().manual_seed(0))
    by_student = generate(pair.student, prompts, 8, stale, torch.Generator().manual_seed(0))
    assert not torch.equal(c.responses, by_student.responses)
    assert_student_trains_alone(pair)  # the session handed the model back
