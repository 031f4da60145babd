"""The special token ids of a checkpoint folder, read from its files, never hard-coded.

Mask, end of sequence, padding, end of turn and BOS: what the denoiser and the prompt codec
need (:class:`SpecialIds`). Every family reads them the same way
(:func:`read_special_ids`); only the token strings looked up in the tokenizer differ, and
they default to LLaDA's (``<|mdm_mask|>``, ``<|eot_id|>``): a family passes its own
(``FamilySpec.mask_token``, ``end_of_turn_token``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiltmatch.models.folders import CONFIG_FILE, read_json
from tiltmatch.models.released import GENERATION_CONFIG_FILE, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: the file :func:`tiltmatch.models.llada.convert_llada` records the ids in
SPECIAL_IDS_FILE = "tiltmatch.json"
#: LLaDA's mask and end-of-turn token strings, the defaults of :func:`read_special_ids`
LLADA_MASK_TOKEN = "<|mdm_mask|>"
LLADA_END_OF_TURN_TOKEN = "<|eot_id|>"

_REQUIRED_IDS = ("mask_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class SpecialIds:
    """The token ids the denoiser and the codec need, read from the checkpoint's files."""

    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    eot_token_id: int | None = None  # end of turn, where the tokenizer has one
    bos_token_id: int | None = None

    def to_json(self) -> dict[str, int | None]:
        """The ids as a JSON-ready dict (the content of ``tiltmatch.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = SPECIAL_IDS_FILE) -> SpecialIds:
        """Ids from a ``tiltmatch.json`` dict; a missing required id names the file."""
        try:
            return cls(
                mask_token_id=int(data["mask_token_id"]),
                eos_token_id=int(data["eos_token_id"]),
                pad_token_id=int(data["pad_token_id"]),
                eot_token_id=_opt_int(data.get("eot_token_id")),
                bos_token_id=_opt_int(data.get("bos_token_id")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: bad or missing special token id ({err})") from None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, list):  # generation configs may list several EOS ids
        value = value[0] if value else None
    return None if value is None else int(value)


def _first_id(*candidates: Any) -> int | None:
    """The first id that is set, in order of authority."""
    return next((v for v in map(_opt_int, candidates) if v is not None), None)


def read_special_ids(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    mask_token: str = LLADA_MASK_TOKEN,
    end_of_turn_token: str = LLADA_END_OF_TURN_TOKEN,
) -> SpecialIds:
    """The special ids of a checkpoint folder (released, converted or saved).

    A ``tiltmatch.json`` holding the mask, EOS and pad ids (as
    :func:`~tiltmatch.models.llada.convert_llada` writes it) is authoritative; one without
    them (``tiltmatch.models.denoiser.save_denoiser`` writes other metadata under the same
    name) is passed over. Otherwise: the mask id from ``config.json`` (``mask_token_id``),
    then ``generation_config.json``, or the tokenizer's ``mask_token`` (LLaDA's
    ``<|mdm_mask|>`` by default), which must agree when both exist; EOS from
    ``config.json``, then ``generation_config.json``, then the tokenizer; pad from
    ``config.json``, then the tokenizer, then EOS; end-of-turn (``end_of_turn_token``) and
    BOS from the tokenizer.
    """
    folder = Path(folder)
    meta_path = folder / SPECIAL_IDS_FILE
    meta = read_json(meta_path) if meta_path.is_file() else {}
    if all(key in meta for key in _REQUIRED_IDS):
        return SpecialIds.from_json(meta, str(meta_path))
    cfg = read_json(folder / CONFIG_FILE)
    tok = tokenizer if tokenizer is not None else load_tokenizer(folder)
    vocab = tok.get_vocab()
    gen_path = folder / GENERATION_CONFIG_FILE
    gen = read_json(gen_path) if gen_path.is_file() else {}

    mask = _first_id(cfg.get("mask_token_id"), gen.get("mask_token_id"))
    tok_mask = vocab.get(mask_token)
    if mask is not None and tok_mask is not None and mask != tok_mask:
        raise ValueError(
            f"{folder / CONFIG_FILE} says mask_token_id = {mask} but the tokenizer's "
            f"{mask_token} is {tok_mask}"
        )
    mask = _first_id(mask, tok_mask)
    if mask is None:
        raise ValueError(
            f"no mask token id: {folder} has no mask_token_id in its configs and the tokenizer "
            f"has no {mask_token}"
        )
    eos = _first_id(cfg.get("eos_token_id"), gen.get("eos_token_id"), tok.eos_token_id)
    if eos is None:
        raise ValueError(f"no end-of-sequence token id in {folder}'s config or tokenizer")
    pad = _first_id(cfg.get("pad_token_id"), tok.pad_token_id, eos)
    return SpecialIds(
        mask_token_id=int(mask),
        eos_token_id=int(eos),
        pad_token_id=eos if pad is None else pad,
        eot_token_id=vocab.get(end_of_turn_token),
        bos_token_id=tok.bos_token_id,
    )
