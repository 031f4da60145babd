"""Use a trained model: load a saved folder with one call, sample from it with another.

::

    import tiltmatch

    model = tiltmatch.load_pretrained("runs/mine/final")   # or "shipped:maze", a LLaDA folder
    completions = model.generate(["spell cat:", "spell dog:"], num_return_sequences=2)

:func:`load_pretrained` reads a model folder (the weights, the codec, and the record of how
the model was trained to be sampled: :mod:`tiltmatch.generation.record`) and returns a
:class:`DiffusionLM`; :meth:`DiffusionLM.generate` samples completions with the recorded
response length and sampler unless told otherwise, the block length and steps derived from
the length (:mod:`tiltmatch.generation.geometry`) when not given. Folders are read as data
only: safetensors weights, JSON metadata, no remote code. A LoRA adapter folder is loaded
onto its base (named in its ``tiltmatch.json`` or ``adapter_config.json``) and merged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from tiltmatch.generation.record import GenerationRecord, read_record
from tiltmatch.model_checks import check_finite_weights, check_model_meta, check_sampler_family
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser, ModelLoadError
from tiltmatch.models.dtypes import torch_dtype
from tiltmatch.models.loading import load_model_folder, resolve_model_path
from tiltmatch.preflight import Heartbeat, ModelShape, model_need, refuse_over
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.sampler import generate as sample
from tiltmatch.settings import ConfigError
from tiltmatch.tasks.dataset import prompt_text

#: what a LoRA adapter folder holds (PEFT's files)
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def default_device() -> torch.device:
    """The accelerator when one is visible (CUDA, then Apple's MPS), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class DiffusionLM:
    """A loaded masked diffusion model with its codec and its record, ready to sample.

    ``model`` is the transformers model (bidirectional), ``codec`` its
    :class:`~tiltmatch.models.codecs.PromptCodec`, ``record`` the folder's
    :class:`~tiltmatch.generation.record.GenerationRecord`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        codec: PromptCodec,
        record: GenerationRecord | None = None,
        path: Path | None = None,
    ) -> None:
        self.model = model
        self.codec = codec
        self.record = record or GenerationRecord()
        self.path = path
        self.denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        base: str | Path | None = None,
    ) -> DiffusionLM:
        """:func:`load_pretrained` (transformers' spelling)."""
        return load_pretrained(folder, device=device, dtype=dtype, base=base)

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.denoiser.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionLM:
        """Move the weights to ``device``; returns self."""
        self.model.to(device)  # type: ignore[arg-type]
        return self

    def sampling_config(self, max_new_tokens: int | None = None, **settings: Any) -> SamplingConfig:
        """The sampler :meth:`generate` uses: the recorded one, ``settings``
        (:class:`SamplingConfig` fields) over it, the geometry derived where unset."""
        return self.record.sampling(self.response_length(max_new_tokens), settings)

    def response_length(self, max_new_tokens: int | None = None) -> int:
        """``max_new_tokens``, else the recorded response length, else 128."""
        return self.record.length(max_new_tokens)

    def generate(
        self,
        prompts: str | Sequence[Any],
        max_new_tokens: int | None = None,
        num_return_sequences: int = 1,
        seed: int = 0,
        batch_size: int = 64,
        **sampler: Any,
    ) -> list[str]:
        """Completions of ``prompts`` (a text, or a list of texts or of chat-message lists),
        ``num_return_sequences`` per prompt, prompt by prompt (transformers' order).

        ``max_new_tokens``: the response length (default: the recorded one). ``sampler``:
        any :class:`~tiltmatch.sampling.config.SamplingConfig` field (``temperature``,
        ``steps``, ``block_length``, ``remasking``, ``mode``, ...) over the recorded sampler.
        ``seed`` makes the draw reproducible.
        """
        texts = self._prompt_texts(prompts)
        for name, value in (
            ("num_return_sequences", num_return_sequences),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        length = self.response_length(max_new_tokens)
        config = self.sampling_config(length, **sampler)
        check_sampler_family(self.model, config, "mode", "")
        rows = [t for t in texts for _ in range(num_return_sequences)]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        forbidden = sorted({self.codec.pad_token_id} - {self.codec.eos_token_id})
        out: list[str] = []
        for lo in range(0, len(rows), batch_size):
            ids = [self._encode(t) for t in rows[lo : lo + batch_size]]
            result = sample(
                self.denoiser,
                ids,
                length,
                config,
                generator,
                forbidden_token_ids=forbidden,
                eos_token_id=self.codec.eos_token_id,
            )
            out += [self.codec.decode_response(r.tolist()) for r in result.responses.cpu()]
        return out

    __call__ = generate

    def _prompt_texts(self, prompts: str | Sequence[Any]) -> list[str]:
        items = [prompts] if isinstance(prompts, str) else list(prompts)
        if items and isinstance(items[0], dict):  # one conversation given as a message list
            items = [items]
        if not items:
            raise ConfigError("generate: no prompts given")
        try:
            return [prompt_text(p, f"prompt {i}") for i, p in enumerate(items)]
        except ValueError as err:
            raise ConfigError(f"generate: {err}") from None

    def _encode(self, text: str) -> list[int]:
        try:
            return self.codec.encode_prompt(text)
        except (ValueError, KeyError) as err:
            raise ConfigError(
                f"generate: the model's tokenizer cannot encode {text!r} ({err})"
            ) from None


def _folder_dtype(path: Path, dtype: str | None) -> torch.dtype:
    """``dtype`` by name, else the folder's recorded one (LLaDA's bfloat16), else float32."""
    if dtype is None:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        recorded = (
            config.get("dtype", config.get("torch_dtype")) if isinstance(config, dict) else None
        )
        dtype = recorded if recorded in ("float32", "bfloat16", "float16") else "float32"
    try:
        return torch_dtype(dtype)
    except ValueError as err:
        raise ConfigError(f"dtype: {err}") from None


def adapter_folder(path: Path) -> Path | None:
    """Where a folder's LoRA adapter is: the folder itself, or (as earlier versions saved
    it) its ``student/`` subfolder; None for a folder of full weights."""
    for where in (path, path / "student"):
        if (where / ADAPTER_CONFIG).is_file():
            return where
    return None


def adapter_base(path: Path, adapter: Path) -> Path:
    """The base model folder of a LoRA adapter: the one its ``tiltmatch.json`` names, else
    PEFT's ``base_model_name_or_path``; a relative name is read from the working folder,
    then beside the adapter."""
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(
            f"the adapter in {adapter} has no {ADAPTER_WEIGHTS} (safetensors only)"
        )
    names = []
    for file, key in (
        (path / "tiltmatch.json", "base"),
        (adapter / ADAPTER_CONFIG, "base_model_name_or_path"),
    ):
        try:
            value = json.loads(file.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            names.append(value)
    for name in names:
        if name.startswith("shipped:"):
            return resolve_model_path(name)
        for candidate in (Path(name).expanduser(), path / name, path.parent / name):
            if (candidate / "config.json").is_file():
                return candidate
    raise ModelLoadError(
        f"the adapter in {adapter} names no base model folder that is here "
        f"({', '.join(names) or 'none named'}): pass base= the base model's folder"
    )


def _load_weights(
    path: Path, dtype: str | None, base: str | Path | None
) -> tuple[PreTrainedModel, PromptCodec]:
    """Model and codec of a model folder, or of a LoRA adapter folder merged into its base."""
    adapter = adapter_folder(path)
    if adapter is None:
        return load_model_folder(path, None, dtype=_folder_dtype(path, dtype))
    base_path = resolve_model_path(str(base)) if base is not None else adapter_base(path, adapter)
    model, codec = load_model_folder(base_path, None, dtype=_folder_dtype(base_path, dtype))
    try:
        import peft
    except ImportError:
        raise ConfigError(
            f"{path} is a LoRA adapter: loading it needs peft (pip install 'tiltmatch[llm]')"
        ) from None
    merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return merged, codec


def load_pretrained(
    folder: str | Path,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    base: str | Path | None = None,
) -> DiffusionLM:
    """A model folder (``tiltmatch train``'s ``final/``, ``save_model()``'s folder, a LoRA
    adapter folder, ``shipped:NAME``, a released LLaDA / Dream / SDAR folder) as a
    :class:`DiffusionLM`, on ``device`` (default: the accelerator when one is visible).

    ``dtype``: ``float32`` / ``bfloat16`` / ``float16`` (default: the folder's own, else
    float32). ``base``: a LoRA adapter's base folder, where the one it names is elsewhere.
    The memory the weights need is checked against the device's before loading.
    """
    path = resolve_model_path(str(folder))
    check_model_meta(path)
    target = torch.device(device) if device is not None else default_device()
    try:
        shape = ModelShape.from_config(json.loads((path / "config.json").read_text("utf-8")))
    except (OSError, ValueError):
        shape = None  # an adapter folder (its base is checked by loading), or a damaged one
    if shape is not None:
        width = _folder_dtype(path, dtype).itemsize
        refuse_over([model_need(shape, f"the model in {path}", width, 1.0)], target)
    with Heartbeat(f"loading {path.name}"):
        model, codec = _load_weights(path, dtype, base)
    check_finite_weights(model, f"the model in {path}")
    model.to(target)  # type: ignore[arg-type]
    return DiffusionLM(model, codec, read_record(path), path)
