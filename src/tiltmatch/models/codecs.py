"""Tokenizers as the rest of the package sees them.

The sampler and the losses work on token ids; tasks work on strings. A
:class:`PromptCodec` is the bridge: it encodes a task's prompt text and decodes
a response. :class:`CharTokenizer` is the project's own character-level codec
for the CPU-sized synthetic tasks (maze, Sudoku, Countdown); real dLLMs use a
Hugging Face tokenizer behind the same protocol (see ``tiltmatch.models.llada``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


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
