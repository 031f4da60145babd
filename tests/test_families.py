"""Model families beyond LLaDA: Dream (shifted logits) and block diffusion (SDAR / TraDo).

Each family's released checkpoint format is loaded from a tiny folder written
by ``family_fixture``; the adapter's logits must equal an independent forward
written from the family's equations (1e-5, float32), with and without left
padding; the family samplers must reproduce the families' reference generate
token for token at temperature 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_fixture import reference_logits, write_tiny_dream, write_tiny_sdar

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.family import (
    BLOCK_DIFFUSION,
    DREAM,
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
    with pytest.raises(ValueError, match="gpt2.*supported families"):
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
