"""The model family registry (tiltmatch.models.registry): a family enters by its spec alone.

The trap: a family spelled in several modules, so that adding one means editing the
config's list of names, the tiny-model builder, the loader's dispatch and the sampler's.
Here a renamed Llama is registered from this file and nowhere else, then built from a run
config, saved in its own "released" format and as a saved denoiser, reloaded both ways
and sampled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from tiltmatch.config import ConfigError, build_config
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.models.denoiser import (
    MaskedDenoiser,
    TinyModelSpec,
    save_denoiser,
    tiny_config_kwargs,
)
from tiltmatch.models.family import family_of
from tiltmatch.models.loading import load_model_and_codec, load_model_folder
from tiltmatch.models.registry import (
    FAMILIES,
    FAMILY_KEY,
    FamilySpec,
    checkpoint_family,
    family_names,
    family_spec,
    register_family,
)
from tiltmatch.sampling.sampler import SamplingConfig, generate
from tiltmatch.tasks import get_task

NAME = "mirror_llama"


def tiny_mirror_config(vocab_size: int, spec: TinyModelSpec) -> LlamaConfig:
    """A Llama without the causal mask, as LLaDA's, under another family name."""
    return LlamaConfig(**tiny_config_kwargs(vocab_size, spec), is_causal=False, mlp_bias=False)


def save_mirror_release(folder: Path, model: LlamaForCausalLM, alphabet: str) -> None:
    """The family's own released format: config.json with model_type "mirror_llama",
    weights under ``mirror.`` key names, and its alphabet in a text file."""
    folder.mkdir(parents=True)
    cfg = model.config.to_dict()
    cfg["model_type"] = NAME
    cfg.pop(FAMILY_KEY, None)  # a release does not record tiltmatch's key
    (folder / "config.json").write_text(json.dumps(cfg))
    weights = {f"mirror.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "weights.safetensors"))
    (folder / "alphabet.txt").write_text(alphabet)


def load_mirror_folder(folder: Path, dtype: torch.dtype) -> tuple[LlamaForCausalLM, CharTokenizer]:
    """The family's loader: its config map, key renames and codec."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("model_type")
    config = LlamaConfig.from_dict(cfg)
    config.is_causal = False
    setattr(config, FAMILY_KEY, NAME)
    model = LlamaForCausalLM(config)
    stored = load_file(str(folder / "weights.safetensors"))
    model.load_state_dict({k.removeprefix("mirror."): v for k, v in stored.items()}, strict=True)
    return model.to(dtype).eval(), CharTokenizer((folder / "alphabet.txt").read_text())


@pytest.fixture
def mirror_family() -> Iterator[FamilySpec]:
    spec = register_family(
        FamilySpec(
            name=NAME,
            label="mirror Llama",
            architecture="llama",
            model_class=LlamaForCausalLM,
            load=load_mirror_folder,
            tiny_config=tiny_mirror_config,
            model_types=(NAME,),
        )
    )
    yield spec
    FAMILIES.pop(NAME)


def _samples(model: LlamaForCausalLM, codec: CharTokenizer, prompts: list[list[int]]) -> list:
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    config = SamplingConfig(steps=8, block_length=8, remasking="random", temperature=1.0)
    out = generate(denoiser, prompts, 8, config, torch.Generator().manual_seed(3))
    return out.responses.tolist()


def test_a_family_registered_alone_builds_saves_reloads_and_samples(
    mirror_family: FamilySpec, tiny_overrides: list[str], tmp_path: Path
) -> None:
    assert NAME in family_names() and family_spec(NAME) is mirror_family
    config = build_config(overrides=[*tiny_overrides, f"model.family={NAME}"])
    task = get_task(config.task, **config.task_options)
    model, codec = load_model_and_codec(config.model, task, seed=0)
    assert isinstance(model, LlamaForCausalLM) and isinstance(codec, CharTokenizer)
    assert getattr(model.config, FAMILY_KEY) == NAME  # the tiny config records its family
    assert family_of(model.config).name == NAME
    prompts = [codec.encode_prompt(e.prompt) for e in task.examples("test", 3, seed=0)]
    before = _samples(model, codec, prompts)

    # Its own released format: recognised by model_type, loaded by its spec's loader.
    release = tmp_path / "release"
    save_mirror_release(release, model, codec.alphabet)
    assert checkpoint_family(json.loads((release / "config.json").read_text())) == NAME
    loaded, loaded_codec = load_model_folder(release, task)
    assert isinstance(loaded_codec, CharTokenizer)
    assert family_of(loaded.config).name == NAME
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert _samples(loaded, loaded_codec, prompts) == before

    # A saved denoiser keeps its family through config.json's dllm_family.
    saved = save_denoiser(tmp_path / "saved", model, {"alphabet": codec.alphabet, "task": "maze"})
    again, again_codec = load_model_folder(saved, task)
    assert family_of(again.config).name == NAME
    assert _samples(again, again_codec, prompts) == before


def test_unregistered_families_are_refused_by_name(tiny_overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"model\.family: .*unknown model family 'nope'.*llada"):
        build_config(overrides=[*tiny_overrides, "model.family=nope"])
    with pytest.raises(ValueError, match=r"dllm_family 'nope' is not a registered model family"):
        checkpoint_family({"model_type": "llama", FAMILY_KEY: "nope"})
    with pytest.raises(ValueError, match="already registered"):
        register_family(family_spec("llada"))


def test_every_builtin_family_spec_is_its_own_and_recognises_its_release() -> None:
    releases = {
        "llada": {"model_type": "llada", "d_model": 8},
        "dream": {"model_type": "Dream", "architectures": ["DreamModel"]},
        "block_diffusion": {"model_type": "sdar", "architectures": ["SDARForCausalLM"]},
    }
    for name, cfg in releases.items():
        spec = family_spec(name)
        assert spec.name == name
        assert checkpoint_family(cfg) == name
        assert [other for other in family_names() if family_spec(other).recognises(cfg)] == [name]
