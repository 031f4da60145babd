"""Tokenizers as the rest of the package sees them.

The sampler and the losses work on token ids; tasks work on strings. A
:class:`PromptCodec` is the bridge: it encodes a task's prompt text and decodes
a response. :class:`CharTokenizer` is the project's own character-level codec
for the CPU-sized synthetic tasks (maze, Sudoku, Countdown); real dLLMs use their
Hugging Face tokenizer and its chat template behind the same protocol
(:class:`ChatCodec`, every released family's codec).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tiltmatch.models.special_ids import SpecialIds


@runtime_checkable
class PromptCodec(Protocol):
    """What the sampler, the trainer and the evaluation need of a tokenizer."""

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt, ready to be followed by the response."""
        ...

    def decode_response(self, ids: Sequence[int]) -> str:
        """The text of a response, cut at the first end-of-sequence token."""
        ...


class CharTokenizer:
    """A character-level tokenizer over a fixed alphabet.

    Ids 0, 1 and 2 are the padding, mask and end-of-sequence tokens; the
    alphabet's characters follow in order. The end-of-sequence token also pads
    a fixed-length response after its answer (the "end symbol").
    """

    PAD, MASK, EOS = "<pad>", "<mask>", "<eos>"

    def __init__(self, alphabet: str) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self.pad_token_id = 0
        self.mask_token_id = 1
        self.eos_token_id = 2
        self._offset = 3
        self._index = {ch: i + self._offset for i, ch in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + self._offset

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a character outside the alphabet is an error that names it."""
        try:
            return [self._index[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the tokenizer's alphabet {self.alphabet!r}"
            ) from None

    def encode_prompt(self, prompt: str) -> list[int]:
        """Ids of a prompt (no special tokens are added)."""
        return self.encode(prompt)

    def encode_response(self, text: str, length: int) -> list[int]:
        """Ids of a response padded with the end symbol to exactly ``length`` tokens."""
        ids = self.encode(text)
        if len(ids) > length:
            raise ValueError(f"response {text!r} is longer than the response length {length}")
        return ids + [self.eos_token_id] * (length - len(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens are shown by name."""
        specials = {0: self.PAD, 1: self.MASK, 2: self.EOS}
        return "".join(
            specials[i] if i in specials else self.alphabet[i - self._offset] for i in ids
        )

    def decode_response(self, ids: Sequence[int]) -> str:
        """Text of a response up to its first end symbol (a mask or pad left in it shows as '?')."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            out.append("?" if i < self._offset else self.alphabet[i - self._offset])
        return "".join(out)


class ChatCodec:
    """The :class:`PromptCodec` of a released model's tokenizer and chat template.

    A prompt becomes one user turn of the chat template followed by the assistant
    header, after which the response starts; a response is cut at its first EOS,
    end-of-turn or pad token. ``vocab_size`` is the model's (the width of its logits),
    not the tokenizer's length. Every released family uses it (LLaDA, Dream, SDAR);
    ``tiltmatch.models.llada.LLaDACodec`` is this class.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        special_ids: SpecialIds,
        vocab_size: int,
        use_chat_template: bool = True,
    ) -> None:
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pass use_chat_template=False")
        self.tokenizer = tokenizer
        self.special_ids = special_ids
        self.use_chat_template = use_chat_template
        self.mask_token_id = special_ids.mask_token_id
        self.pad_token_id = special_ids.pad_token_id
        self.eos_token_id = special_ids.eos_token_id
        self.vocab_size = int(vocab_size)
        self._stop_ids = {special_ids.eos_token_id, special_ids.pad_token_id}
        if special_ids.eot_token_id is not None:
            self._stop_ids.add(special_ids.eot_token_id)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        use_chat_template: bool = True,
        mask_token: str | None = None,
        end_of_turn_token: str | None = None,
    ) -> ChatCodec:
        """The codec of a checkpoint folder, without loading weights.

        ``mask_token``, ``end_of_turn_token``: the token strings the special ids are read
        by (:func:`~tiltmatch.models.special_ids.read_special_ids`; LLaDA's by default).
        """
        from tiltmatch.models.folders import CONFIG_FILE, read_json
        from tiltmatch.models.released import load_tokenizer, resolve_folder
        from tiltmatch.models.special_ids import read_special_ids

        folder = resolve_folder(path)
        cfg = read_json(folder / CONFIG_FILE)
        vocab_size = cfg.get("embedding_size") or cfg.get("vocab_size")
        if vocab_size is None:
            raise ValueError(f"{folder / CONFIG_FILE} has no vocab_size")
        tok = load_tokenizer(folder)
        tokens = {
            k: v
            for k, v in (("mask_token", mask_token), ("end_of_turn_token", end_of_turn_token))
            if v is not None
        }
        return cls(tok, read_special_ids(folder, tok, **tokens), int(vocab_size), use_chat_template)

    def _render(self, prompt: str, add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert isinstance(text, str)
        return text

    def prompt_text(self, prompt: str) -> str:
        """The chat-formatted prompt, ending with exactly one assistant header."""
        if not self.use_chat_template:
            return prompt
        with_header = self._render(prompt, add_generation_prompt=True)
        without = self._render(prompt, add_generation_prompt=False)
        # LLaDA's template appends the assistant header whatever add_generation_prompt
        # says; a template that also honours the flag would then append it twice.
        header = with_header[len(without) :] if with_header.startswith(without) else ""
        if header and without.endswith(header):
            return without
        return with_header

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt (chat template, BOS included), ready for the response."""
        text = self.prompt_text(prompt)
        # The template writes BOS itself; the tokenizer must not add another.
        add_special = not self.use_chat_template
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def decode_response(self, ids: Sequence[int]) -> str:
        """Text of a response up to its first EOS / end-of-turn / pad token, specials skipped."""
        kept = []
        for i in ids:
            if int(i) in self._stop_ids:
                break
            kept.append(int(i))
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))
