"""The denoiser: one thin adapter around a Hugging Face ``PreTrainedModel``.

METHOD.md section 1: a masked diffusion model is a denoiser ``mu_theta(v | z, i)``,
the softmax of the logits at a masked position ``i`` of the partly masked
response ``z``. Every denoiser here is a transformers model with non-causal
attention: a ``LlamaForCausalLM`` whose config says ``is_causal=False`` has
exactly LLaDA's architecture, whether tiny (built from a config for CPU work)
or LLaDA-8B itself; Dream is such a ``Qwen2ForCausalLM``, block diffusion (SDAR)
such a ``Qwen3ForCausalLM`` with a block-causal mask. What differs between the
families is one hook read from the config (:mod:`tiltmatch.models.family`), declared
by each family's spec in :mod:`tiltmatch.models.registry`.

Batch layout used throughout the package: each row is a **left-padded prompt
followed by a response of fixed length L**, so the response occupies the last L
columns of every row. Padding is expressed only through the 2-D attention mask
(keys at padded columns are ignored by every query; attention stays
bidirectional), and position ids count real tokens only, so a row's outputs do
not depend on how much padding its batch needed.
"""

from __future__ import annotations

import inspect
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Cache, LlamaForCausalLM, PreTrainedModel

from tiltmatch.models.family import family_of
from tiltmatch.models.registry import DEFAULT_FAMILY, FAMILIES, FAMILY_KEY, family_spec

# transformers renamed the forward's ``past_key_values`` to ``cache`` during 5.x.
CACHE_ARGUMENT = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of a tiny bidirectional denoiser for CPU work, and its family's architecture."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256
    #: the model family: a name in tiltmatch.models.registry.FAMILIES
    family: str = DEFAULT_FAMILY
    #: block size of a block-causal family's model
    block_size: int = 4


def tiny_config_kwargs(vocab_size: int, spec: TinyModelSpec) -> dict[str, Any]:
    """The config arguments every family's tiny model shares (Llama, Qwen2 and Qwen3 alike)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,  # Qwen3's default would be 128
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )


def tiny_denoiser(
    vocab_size: int, spec: TinyModelSpec | None = None, seed: int = 0
) -> PreTrainedModel:
    """A freshly initialised tiny denoiser of ``spec.family``'s architecture.

    The family's registry spec builds the config (``tiny_config``: LLaDA a bidirectional
    Llama, Dream a bidirectional Qwen2 with shifted logits, block diffusion a block-causal
    Qwen3) and names the transformers class; the config records the family (``dllm_family``)
    unless it is the default one, so a saved model keeps it.
    """
    spec = spec or TinyModelSpec()
    family = family_spec(spec.family)
    config = family.tiny_config(vocab_size, spec)
    if family.name != DEFAULT_FAMILY:
        setattr(config, FAMILY_KEY, family.name)
    if getattr(config, "is_causal", True):
        raise ValueError(f"family {family.name!r}'s tiny config must set is_causal=False")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.model_class(config)
    assert isinstance(model, PreTrainedModel)
    return model


class MaskedDenoiser(nn.Module):
    """``mu_theta(. | z, i)`` on response positions, from a bidirectional transformers model.

    Holds the mask and padding token ids and the model's family
    (:mod:`tiltmatch.models.family`: a shifted head, a block-causal mask).
    ``forward`` returns logits for the last ``response_length`` columns only: the
    vocabulary projection over a long prompt is most of the memory of a large
    model (METHOD.md section 6).
    """

    def __init__(self, model: PreTrainedModel, mask_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        if getattr(model.config, "is_causal", True):
            raise ValueError(
                "the denoiser must have bidirectional attention: build the model with "
                "config.is_causal=False"
            )
        self.model = model
        self.family = family_of(model.config)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counted over real tokens only, so left padding shifts nothing."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` at the last ``response_length`` columns of ``input_ids``.

        The sampler's hooks (:mod:`tiltmatch.sampling.sampler`): ``cache``, a transformers
        ``Cache`` this forward reads (keys/values of columns not in ``input_ids``, whose
        ``attention_mask`` columns come first) and extends in place; ``position_ids`` of the
        columns of ``input_ids`` (needed when they are not the sequence's last ones);
        ``logits_at``: a boolean ``[B, response_length]`` choosing the only response
        columns projected onto the vocabulary (logits ``[n_chosen, V]``, row-major).
        The family hook (:mod:`tiltmatch.models.family`): a shifted head reads each
        response column from the column before it; a block model gets its
        block-causal mask.
        """
        family = self.family
        width = input_ids.shape[1]
        all_positions = self.position_ids(attention_mask)
        if position_ids is None:
            position_ids = all_positions[:, -width:]
        if family.logit_shift:
            if cache is not None:
                raise NotImplementedError(
                    "a shifted-logit (Dream) denoiser has no cached sampler mode yet: "
                    "use sampler.mode=exact"
                )
            if not bool(attention_mask[:, -response_length - 1].all()):
                # A shifted head reads response position 0 from the token before it.
                raise ValueError(
                    "a shifted-logit (Dream) denoiser needs a non-empty prompt in every row"
                )
        keep: int | torch.Tensor = response_length + family.extra_columns
        if logits_at is not None:
            before = logits_at.new_zeros((logits_at.shape[0], width - response_length))
            keep = torch.cat([before, logits_at], dim=1)
            if family.logit_shift:  # column c's logits come from column c - 1
                keep = torch.cat([keep[:, 1:], keep.new_zeros((keep.shape[0], 1))], dim=1)
        mask = family.attention(attention_mask, all_positions)
        if mask.dim() == 4:  # the rows of this forward's query columns only
            mask = mask[:, :, -width:, :]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            use_cache=cache is not None,
            **({CACHE_ARGUMENT: cache} if cache is not None else {}),
        )
        if logits_at is not None:
            return out.logits
        return family.response_logits(out.logits, response_length)

    def check_positions(self, prompt_tokens: int, response_length: int) -> None:
        """Refuse a prompt plus response longer than the model's positions.

        Beyond ``max_position_embeddings`` RoPE runs at angles the model never saw in
        training: no error from transformers, just quietly worse outputs.
        """
        config = getattr(self.model, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and prompt_tokens + response_length > limit:
            raise ValueError(
                f"a prompt of {prompt_tokens} tokens plus a {response_length}-token response "
                f"needs {prompt_tokens + response_length} positions; the model has {limit} "
                "(max_position_embeddings): shorten the prompt or the response"
            )

    def response_logits(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        canvas: torch.Tensor,
        cache: Cache | None = None,
        logits_at: torch.Tensor | None = None,
        columns: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` on the canvas ``z`` ``[B, L]`` that follows each prompt.

        The one place where a left-padded prompt (ids and attention mask ``[B, P]``)
        and a response canvas are joined into the model's input: the sampler, the
        objectives and pretraining all read the denoiser through it. Every canvas
        column is attended to (mask tokens included: they are what the denoiser
        reads, METHOD.md section 1). The model call goes through ``self(...)``, so a
        subclass that routes its forward differently (a LoRA adapter view) is honoured.
        ``cache``, ``logits_at``: the sampler's hooks of :meth:`forward`.

        ``columns``: ``(start, stop)``, run only these canvas columns (``start < 0`` takes
        in the prompt's last ``-start`` columns too) against ``cache``, which holds the keys
        and values of the other columns they attend to, either every column before the
        window (a prefix: a block-causal model's finished blocks, the prefix cache) or every
        column outside it (the dual cache: prefix, then the canvas after the window). The
        logits are the window's (``logits_at``: ``[B, stop - start]``); the forward appends
        the window to the cache.
        """
        ids = torch.cat([prompt_ids, canvas], dim=1)
        mask = torch.cat([prompt_mask, torch.ones_like(canvas)], dim=1)
        if columns is not None:
            return self._window_logits(ids, mask, prompt_ids.shape[1], columns, cache, logits_at)
        if cache is None and logits_at is None:  # a subclass may take the three arguments only
            return self(ids, mask, canvas.shape[1])
        return self(ids, mask, canvas.shape[1], cache=cache, logits_at=logits_at)

    def _window_logits(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        width: int,
        columns: tuple[int, int],
        cache: Cache | None,
        logits_at: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`response_logits` of the joined columns ``[width + start, width + stop)``."""
        start, stop = width + columns[0], width + columns[1]
        if cache is None or not 0 <= start < stop <= ids.shape[1]:
            raise ValueError(f"a window {columns} of canvas columns needs a cache of the others")
        held, outside = cache.get_seq_length(), ids.shape[1] - (stop - start)
        if held == start:  # the prefix: the columns before the window, in order
            attention = mask[:, :stop]
        elif held == outside and self.family.block_size is None:
            # Every column outside the window, cached in that order (bidirectional only).
            attention = torch.cat([mask[:, :start], mask[:, stop:], mask[:, start:stop]], 1)
        else:
            raise ValueError(
                f"the cache holds {held} columns: neither the {start} before the window "
                f"{columns} nor (bidirectional models only) the {outside} outside it"
            )
        positions = self.position_ids(mask)[:, start:stop]
        return self(
            ids[:, start:stop],
            attention,
            stop - start,
            cache=cache,
            position_ids=positions,
            logits_at=logits_at,
        )

    def session(self) -> AbstractContextManager[None]:
        """A context around many consecutive forwards of this denoiser alone (sampling).

        A plain denoiser needs none; a view of a shared model (a LoRA adapter)
        uses it to switch adapters once instead of around every forward.
        """
        return nullcontext()


DENOISER_META = "tiltmatch.json"
#: The files of a saved denoiser folder (``tiltmatch pretrain --out`` refuses to replace them).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    DENOISER_META,
)


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded exactly as stored; the message names the folder
    and what is wrong (a missing or unexpected tensor, a wrong shape, an unreadable file)."""


def save_denoiser(
    folder: str | Path,
    model: PreTrainedModel,
    meta: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a denoiser with ``save_pretrained`` (safetensors) plus tiltmatch's metadata.

    ``meta`` holds what the adapter needs to use it again: special token ids
    and, for character-level tasks, the tokenizer alphabet and the task name.
    ``state_dict``: the weights to write instead of the model's own (its whole
    tensors, when the model holds FSDP shards).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    (folder / DENOISER_META).write_text(json.dumps(meta, indent=2))
    return folder


def load_denoiser(folder: str | Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Load a denoiser saved by :func:`save_denoiser`; a missing folder is a clear error."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no denoiser checkpoint (config.json) in {folder}")
    meta_file = folder / DENOISER_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{meta_file} is not valid JSON ({err})") from None
    import_recorded_family(folder)
    check_stored_weights(folder)
    try:
        # Llama, Qwen2 or Qwen3 by the config's model_type: transformers' own classes, or a
        # family's own class (registered with transformers' Auto classes by its module).
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, output_loading_info=True, trust_remote_code=False
        )
        model, info = loaded
    except Exception as err:  # safetensors' and transformers' own error types for bad files
        raise ModelLoadError(
            f"cannot load the model in {folder}: {type(err).__name__}: {_one_line(err)}"
        ) from None
    check_loading_info(folder, info)
    assert isinstance(model, PreTrainedModel)
    if getattr(model.config, "is_causal", True):
        raise ValueError(f"the model in {folder} is causal; a denoiser needs is_causal=False")
    return model, meta


def import_recorded_family(folder: Path) -> None:
    """Import the module of the family a saved ``config.json`` records (``dllm_family``):
    a family that brings its own model class registers it with transformers' Auto classes
    there, which must happen before transformers reads the folder."""
    try:
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # unreadable: check_stored_weights says so, naming the file
    name = recorded.get(FAMILY_KEY) if isinstance(recorded, dict) else None
    if isinstance(name, str) and name in FAMILIES:
        family_spec(name)


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """Strict loading: refuse a folder whose weights do not match its config exactly.

    ``from_pretrained`` initialises a missing tensor at random and drops an unexpected one
    with a log warning; either would be a silent wrong model (a config claiming more layers
    than are stored loads the extra layers random).
    """
    for kind, label in (
        ("missing_keys", "lacks tensor"),
        ("unexpected_keys", "holds unexpected tensor"),
        ("mismatched_keys", "has a wrong-shaped tensor"),
    ):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(kind) or [])
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ModelLoadError(f"the model in {folder} {label} {keys[0]!r}{more}")
    if errors := info.get("error_msgs"):
        raise ModelLoadError(f"cannot load the model in {folder}: {_one_line(errors[0])}")


def _stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a folder's safetensors (one file or an index), headers only."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({folder / Path(str(name)).name for name in weight_map.values()})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"{index} is not a safetensors index (no weight_map)") from None
    else:
        files = [folder / "model.safetensors"]
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"the model in {folder} has no weights file {file.name}")
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as err:  # safetensors' own error type for truncated or garbage bytes
            raise ModelLoadError(
                f"{file} is not a readable safetensors file ({_one_line(err)})"
            ) from None
    return shapes


def check_stored_weights(folder: Path) -> None:
    """Strict loading, before anything is loaded: the stored tensors are exactly the ones
    ``config.json`` describes, with the same shapes (read from the file headers).

    ``from_pretrained`` alone would initialise a missing tensor at random, and a config
    claiming more layers than are stored would load with random extra layers.
    """
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{folder / 'config.json'} is unreadable ({_one_line(err)})") from None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # a config whose sizes do not make a model
        raise ModelLoadError(
            f"{folder / 'config.json'} does not describe a model ({_one_line(err)})"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = _stored_shapes(folder)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # shares the embedding's storage
        stored.pop("lm_head.weight", None)
    if missing := sorted(expected.keys() - stored.keys()):
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelLoadError(
            f"the model in {folder} lacks tensor {missing[0]!r}{more} that its config.json "
            "describes"
        )
    if extra := sorted(stored.keys() - expected.keys()):
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ModelLoadError(
            f"the model in {folder} holds unexpected tensor {extra[0]!r}{more} (not in its "
            "config.json's architecture)"
        )
    for key in sorted(expected):
        if expected[key] != stored[key]:
            raise ModelLoadError(
                f"the model in {folder}: tensor {key!r} has shape {list(stored[key])}, its "
                f"config.json needs {list(expected[key])}"
            )
