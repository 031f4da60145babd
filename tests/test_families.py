"""Model families beyond LLaDA: Dream (shifted logits) and block diffusion (SDAR / TraDo).

Each family's released checkpoint format is loaded from a tiny folder written
by ``family_fixture``; the adapter's logits must equal an independent forward
written from the family's equations (1e-5, float32), with and without left
padding; the family samplers must reproduce the families' reference generate
token for token at temperature 0.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import needs_shared_data
from family_fixture import reference_logits, write_tiny_dream, write_tiny_sdar

from tiltmatch.models.block_diffusion import NAME as BLOCK_DIFFUSION
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.dream import NAME as DREAM
from tiltmatch.models.family import (
    block_causal_mask,
    decoder_layer_classes,
    family_of,
    lora_target_modules,
)
from tiltmatch.models.loading import checkpoint_family, load_model_folder

WRITERS = {"dream": write_tiny_dream, "sdar": write_tiny_sdar}


@pytest.fixture(scope="module", params=["dream", "sdar"])
def tiny(request, tmp_path_factory):
    name = request.param
    fam = WRITERS[name](tmp_path_factory.mktemp(name) / "ckpt")
    model, codec = load_model_folder(fam.folder)
    return name, fam, model, codec


def _batch(lengths: list[int], response: int, vocab: int, seed: int = 0):
    """Left-padded prompts of ``lengths`` real tokens, then a response of ``response`` columns."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width + response, dtype=torch.long)
    real = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(0, vocab, (n + response,), generator=g)
        real[r, width - n :] = 1
    return ids, real


def test_released_format_loads_through_native_classes(tiny) -> None:
    name, fam, model, codec = tiny
    expected = {"dream": "Qwen2ForCausalLM", "sdar": "Qwen3ForCausalLM"}[name]
    assert type(model).__name__ == expected
    assert model.config.is_causal is False
    assert codec.mask_token_id == fam.mask_id and codec.eos_token_id == fam.eos_id
    assert codec.pad_token_id == fam.eos_id
    family = family_of(model.config)
    if name == "dream":
        assert family.name == DREAM and family.logit_shift and family.block_size is None
        assert model.config.rope_parameters["rope_theta"] == 5000.0
    else:
        assert family.name == BLOCK_DIFFUSION and not family.logit_shift
        assert family.block_size == fam.config["block_size"]
        assert model.config.head_dim == 16
    # The chat template is the checkpoint's; the prompt ends with the assistant header.
    text = codec.prompt_text("hi")
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>assistant") == 1
    ids = codec.encode_prompt("hi")
    assert ids[0] == fam.specials["<|im_start|>"]
    assert codec.decode_response([*codec.encode_prompt("x")[-2:], fam.specials["<|im_end|>"], 5])


@pytest.mark.parametrize("lengths", [[6, 6], [3, 7, 5]])
def test_logits_equal_the_reference_forward(tiny, lengths) -> None:
    name, fam, model, codec = tiny
    response = 6
    ids, real = _batch(lengths, response, codec.vocab_size)
    denoiser = MaskedDenoiser(model.float(), codec.mask_token_id, codec.pad_token_id)
    sd = {k: v.float() for k, v in fam.state_dict.items()}
    ref = reference_logits(fam.__class__(fam.folder, fam.config, sd, fam.specials), ids, real, name)
    got = denoiser(ids, real, response)
    torch.testing.assert_close(got, ref[:, -response:], atol=1e-5, rtol=1e-5)
    # Left padding changes nothing: each row alone gives the same logits.
    for r, n in enumerate(lengths):
        alone_ids = ids[r : r + 1, -(n + response) :]
        alone = denoiser(alone_ids, torch.ones_like(alone_ids), response)
        torch.testing.assert_close(alone, got[r : r + 1], atol=1e-5, rtol=1e-5)


def test_shift_and_block_structure_are_real(tiny) -> None:
    """The traps: Dream's position i must depend on token i-1's column; SDAR's on no later block."""
    name, fam, model, codec = tiny
    denoiser = MaskedDenoiser(model.float(), codec.mask_token_id, codec.pad_token_id)
    ids, real = _batch([5], 8, codec.vocab_size, seed=3)
    base = denoiser(ids, real, 8)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % codec.vocab_size  # the last response token
    after = denoiser(changed, real, 8)
    diff = (after - base).abs().amax(-1)[0]
    if name == "dream":
        # Bidirectional: every position sees the change.
        assert bool((diff > 1e-6).all())
    else:
        block = fam.config["block_size"]
        pos = torch.arange(5, 5 + 8)
        later_block = pos // block == (5 + 7) // block
        assert bool((diff[~later_block] == 0).all()) and bool((diff[later_block] > 1e-6).all())


def test_block_causal_mask_ignores_padding() -> None:
    real = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    m = block_causal_mask(real, pos, 2)[:, 0]
    # Row 0: real positions 0,1,2 at columns 2,3,4; blocks {0,1} and {2}.
    assert m[0, 2].tolist() == [False, False, True, True, False]
    assert m[0, 4].tolist() == [False, False, True, True, True]
    assert m[1, 1].tolist() == [True, True, False, False, False]


def test_family_dispatch_reads_the_config_once(tmp_path: Path) -> None:
    assert checkpoint_family({"model_type": "Dream"}) == DREAM
    assert checkpoint_family({"model_type": "sdar"}) == BLOCK_DIFFUSION
    assert checkpoint_family({"model_type": "llada"}) == "llada"
    with pytest.raises(ValueError, match=r"gpt2.*supported families"):
        checkpoint_family({"model_type": "gpt2"})
    fam = write_tiny_dream(tmp_path / "bad")
    cfg = json.loads((fam.folder / "config.json").read_text())
    cfg["use_sliding_window"] = True
    (fam.folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_sliding_window"):
        load_model_folder(fam.folder)


def test_layer_classes_and_lora_targets_come_from_the_model(tiny) -> None:
    name, _fam, model, _codec = tiny
    layer = {"dream": "Qwen2DecoderLayer", "sdar": "Qwen3DecoderLayer"}[name]
    assert decoder_layer_classes(model) == (layer,)
    assert "q_proj" in lora_target_modules(model)
    with pytest.raises(ValueError, match="ff_proj"):
        lora_target_modules(model, ["q_proj", "ff_proj"])


# --------------------------------------------------------------------------- reference generate


def dream_reference_generate(model, prompt, length, steps, alg, mask_id, banned, eps=1e-3):
    """Dream's published ``_sample`` at temperature 0 for one unpadded prompt, written here.

    Full attention, logits shifted by one; step i of linspace(1, eps, steps + 1)
    commits int(n (1 - s/t)) masked tokens (all at the last step) by confidence.
    """
    x = torch.cat([prompt, torch.full((1, length), mask_id)], dim=1)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1).double()
        logits[..., banned] = -torch.inf
        probs = torch.softmax(logits[mask_index], dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            top = probs.sort(dim=-1, descending=True).values
            confidence = top[:, 0] - top[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs.clamp(min=1e-300))).sum(-1)
        t, s = timesteps[i], timesteps[i + 1]
        n = mask_index.sum() / mask_index.shape[0]
        k = int(n * (1 - s / t)) if i < steps - 1 else int(n)
        full = torch.full(x.shape, -torch.inf, dtype=torch.float64)
        full[mask_index] = confidence
        if k > 0:
            idx = full.topk(k).indices
            proposal = torch.full_like(x, mask_id)
            proposal[mask_index] = x0
            x[0, idx[0]] = proposal[0, idx[0]]
    return x[:, prompt.shape[1] :]


def sdar_reference_generate(model, prompt, length, block, steps, mask_id, banned):
    """SDAR's published block_diffusion_generate, greedy, for one prompt, without a cache.

    Blocks of ``block`` from the first token; the partial prompt block is decoded
    with the response; every denoising forward recomputes the whole prefix under
    the block-causal mask; tokens_per_step(block, steps) lowest-confidence-first.
    """
    p = prompt.shape[1]
    num_blocks = -(-(p + length) // block)
    total = num_blocks * block
    tri = torch.tril(torch.ones(num_blocks, num_blocks, dtype=torch.bool))
    allowed = tri.repeat_interleave(block, 0).repeat_interleave(block, 1)[None, None]
    x = torch.full((1, total), mask_id)
    x[:, :p] = prompt
    base, rem = divmod(block, steps)
    schedule = [base + (1 if j < rem else 0) for j in range(steps)]
    for k in range(p // block, num_blocks):
        lo, hi = k * block, (k + 1) * block
        for step in range(steps + 1):
            cur = x[:, lo:hi]
            mask_index = cur == mask_id
            if not mask_index.any():
                break
            logits = (
                model(
                    x[:, :hi],
                    attention_mask=allowed[..., :hi, :hi],
                    position_ids=torch.arange(hi)[None],
                )
                .logits[:, lo:hi]
                .double()
            )
            logits[..., banned] = -torch.inf
            x0_p, x0 = torch.softmax(logits, -1).max(-1)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            idx = confidence[0].topk(schedule[step]).indices
            cur[0, idx] = x0[0, idx]
    return x[:, p : p + length]


def _prompts(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab - 8, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_generate_reproduces_the_reference(tmp_path: Path, alg) -> None:
    from tiltmatch.sampling.families import dream_generate

    fam = write_tiny_dream(tmp_path / "dream", seed=1)
    model, codec = load_model_folder(fam.folder)
    denoiser = MaskedDenoiser(model.float(), codec.mask_token_id, codec.pad_token_id)
    prompts = _prompts([4, 9, 6], codec.vocab_size)
    banned = [codec.mask_token_id]
    out = dream_generate(denoiser, prompts, 10, 4, torch.Generator().manual_seed(0), alg)
    assert not bool((out.responses == codec.mask_token_id).any())
    for row, prompt in enumerate(prompts):
        ref = dream_reference_generate(
            model, torch.tensor([prompt]), 10, 4, alg, codec.mask_token_id, banned
        )
        assert out.responses[row].tolist() == ref[0].tolist()


@pytest.mark.parametrize(("lengths", "steps"), [([5, 8, 6, 3], 4), ([4, 8], 2)])
def test_block_generate_with_cache_reproduces_the_reference(tmp_path: Path, lengths, steps) -> None:
    from tiltmatch.sampling.families import block_generate

    fam = write_tiny_sdar(tmp_path / "sdar", seed=2, block_size=4)
    model, codec = load_model_folder(fam.folder)
    denoiser = MaskedDenoiser(model.float(), codec.mask_token_id, codec.pad_token_id)
    prompts = _prompts(lengths, codec.vocab_size, seed=1)
    out = block_generate(
        denoiser, prompts, 10, steps, torch.Generator().manual_seed(0), record_states=True
    )
    for row, prompt in enumerate(prompts):
        ref = sdar_reference_generate(
            model, torch.tensor([prompt]), 10, 4, steps, codec.mask_token_id, [codec.mask_token_id]
        )
        assert out.responses[row].tolist() == ref[0].tolist(), row
    # Recorded canvases are block-decoding states: every later block still fully masked.
    assert out.visited is not None and out.visited.shape[1:] == (len(prompts), 10)
    masked = out.visited == codec.mask_token_id
    first_masked = masked.float().argmax(-1)
    for s in range(out.visited.shape[0]):
        for r, n in enumerate(lengths):
            if masked[s, r].any():
                j = int(first_masked[s, r])
                later = ((torch.arange(10) + n) // 4) > ((n + j) // 4)
                assert bool(masked[s, r][later].all())


def test_common_generate_hands_block_models_to_the_block_sampler(tmp_path: Path) -> None:
    from tiltmatch.sampling.families import block_generate
    from tiltmatch.sampling.sampler import SamplingConfig, generate

    fam = write_tiny_sdar(tmp_path / "sdar", seed=2, block_size=4)
    model, codec = load_model_folder(fam.folder)
    denoiser = MaskedDenoiser(model.float(), codec.mask_token_id, codec.pad_token_id)
    prompts = _prompts([5, 7], codec.vocab_size)
    # block_generate draws as the block decoder always did: compatible noise
    cfg = SamplingConfig(steps=8, block_length=8, temperature=0.0, noise="compatible")
    a = generate(denoiser, prompts, 8, cfg, torch.Generator().manual_seed(0)).responses
    b = block_generate(denoiser, prompts, 8, 4, torch.Generator().manual_seed(0)).responses
    assert a.tolist() == b.tolist()


# --------------------------------------------------------------------------- DTM end to end


@pytest.mark.parametrize(
    ("family", "states"),
    [("dream", "random"), ("block_diffusion", "block"), ("block_diffusion", "trajectory")],
)
def test_each_family_trains_with_dtm_end_to_end(
    tiny_overrides, tmp_path: Path, family, states
) -> None:
    from tiltmatch.config import build_config
    from tiltmatch.training.runner import run_training

    config = build_config(
        overrides=[
            *tiny_overrides,
            f"model.family={family}",
            "model.block_size=4",
            f"dtm.states={states}",
        ]
    )
    result = run_training(config, tmp_path / "run", quiet=True)
    history = result["history"]
    assert history and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert result["trainer"].phase.a == pytest.approx(config.dtm.a_end)
    model, _codec = load_model_folder(tmp_path / "run" / "final")
    assert family_of(model.config).name == family  # the saved denoiser keeps its family
    trained = MaskedDenoiser(model, 1, 0)
    assert trained.family == result["trainer"].pair.student.family


def test_block_family_refuses_states_it_cannot_match(tiny_overrides, tmp_path: Path) -> None:
    from tiltmatch.config import build_config
    from tiltmatch.training.runner import build_trainer

    config = build_config(
        overrides=[*tiny_overrides, "model.family=block_diffusion", "dtm.states=random"]
    )
    with pytest.raises(ValueError, match="trajectory"):
        build_trainer(config, tmp_path / "run", quiet=True)


@pytest.mark.parametrize("family", ["dream", "block_diffusion"])
def test_lora_pair_with_checkpointing_on_each_family(family) -> None:
    """LoRA student/teacher on a Qwen2 / Qwen3 base; checkpointing changes no gradient."""
    from tiltmatch.config import LoRAConfig
    from tiltmatch.models.denoiser import TinyModelSpec, tiny_denoiser
    from tiltmatch.training.lora import LoRAPair

    spec = TinyModelSpec(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48, family=family
    )
    ids = torch.randint(3, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    ids[:, -4:] = 1
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    grads = []
    for checkpointing in (False, True):
        pair = LoRAPair(
            tiny_denoiser(20, spec, seed=0),
            1,
            0,
            LoRAConfig(r=4, alpha=8, dropout=0.0),
            gradient_checkpointing=checkpointing,
        )
        params = list(pair.trainable_parameters())
        with torch.no_grad():  # a non-zero adapter, identical in both runs
            g = torch.Generator().manual_seed(1)
            for p in params:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        pair.student.train()
        assert pair.peft_model.base_model.model.is_gradient_checkpointing == checkpointing
        teacher = pair.teacher(ids, mask, 4)  # a frozen view in between, as in a DTM step
        loss = pair.student(ids, mask, 4).logsumexp(-1).mean() + 0 * teacher.sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        assert pair.student.family.name == family
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


# --------------------------------------------------------------------------- eval on the tasks

TASK_FILES = {
    "sudoku": "sudoku/test_split_new.csv",
    "countdown": "countdown/test.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "math500": "math500/test.jsonl",
}


@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=needs_shared_data(f)) for t, f in sorted(TASK_FILES.items())]
)
@pytest.mark.parametrize("writer", ["dream", "sdar"])
def test_eval_each_family_checkpoint_on_the_published_tasks(
    tmp_path: Path, capsys, task, writer
) -> None:
    from tiltmatch.cli import main

    fam = WRITERS[writer](tmp_path / writer)
    out = tmp_path / "eval"
    options = ["--task-option", "format=chat"] if task in ("sudoku", "countdown") else []
    args = ["eval", "--model", str(fam.folder), "--task", task, *options, "--limit", "2"]
    args += ["--gen-length", "8", "--block-length", "4", "--steps", "4", "--batch-size", "2"]
    code = main([*args, "--temperature", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["examples"] == 2
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0.0 <= r["reward"] <= 1.0 for r in rows)


def test_block_states_are_block_decoding_states() -> None:
    from tiltmatch.dtm.states import block_states

    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 9, (400, 10), generator=g)
    lengths = torch.tensor([5, 8, 6, 3] * 100)
    st = block_states(x, lengths, 4, 1, g)
    for row in range(400):
        blk = (int(lengths[row]) % 4 + torch.arange(10)) // 4
        covered = st.loss_mask[row]
        assert covered.any()
        active = int(blk[covered][0])
        assert bool((blk[covered] == active).all())  # the loss stays in the active block
        assert bool((st.z[row][blk > active] == 1).all())  # later blocks fully masked
        assert bool((st.z[row][blk < active] == x[row][blk < active]).all())  # earlier clean
        torch.testing.assert_close(st.position_weight[row].sum(), torch.tensor(1.0))
    # Every block of every offset is the active one sometimes.
    actives = {
        (
            int(lengths[r]) % 4,
            int(((int(lengths[r]) % 4 + torch.arange(10)) // 4)[st.loss_mask[r]][0]),
        )
        for r in range(400)
    }
    assert len(actives) == 3 + 3 + 3 + 4  # offsets 1, 0, 2, 3 touch 3, 3, 3, 4 blocks


def test_family_recipes_validate() -> None:
    from tiltmatch.config import build_config
    from tiltmatch.tasks import get_task

    root = Path(__file__).resolve().parents[1] / "configs"
    for family, states in (("dream", "random"), ("block_diffusion", "block")):
        paths = sorted((root / family).glob("*.yaml"))
        assert paths, family
        for path in paths:
            config = build_config(path)
            task = get_task(config.task, **config.task_options)
            assert task.response_length % config.sampler.block_length == 0, path
            assert config.lora is not None and config.model.base, path
            assert config.dtm.states == states, path


def test_block_sampler_runs_through_a_lora_teacher_session() -> None:
    """The cached block sampler calls the model directly: inside the teacher's session."""
    from tiltmatch.config import LoRAConfig
    from tiltmatch.models.denoiser import TinyModelSpec, tiny_denoiser
    from tiltmatch.sampling.families import block_generate
    from tiltmatch.training.lora import LoRAPair

    spec = TinyModelSpec(32, 2, 2, 48, family="block_diffusion", block_size=4)
    pair = LoRAPair(tiny_denoiser(20, spec, seed=0), 1, 0, LoRAConfig(r=4, alpha=8, dropout=0.0))
    groups = pair.state_dict()
    g = torch.Generator().manual_seed(2)
    groups["teacher"] = {
        k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in groups["teacher"].items()
    }
    pair.load_state_dict(groups)
    prompts = [[5, 6, 7, 8, 9], [4, 4, 6]]

    def run(view):
        return block_generate(view, prompts, 8, 2, torch.Generator().manual_seed(0)).responses

    teacher_out = run(pair.teacher)
    # The teacher's weights merged into a plain copy of the model: what the session must use.
    merged = copy.deepcopy(pair.peft_model)
    merged.set_adapter("teacher")
    expected = run(MaskedDenoiser(merged.merge_and_unload(), 1, 0))
    assert teacher_out.tolist() == expected.tolist()
    assert run(pair.student).tolist() != teacher_out.tolist()  # the adapters really differ
