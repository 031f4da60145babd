"""A task over any prompt dataset: a ``datasets.Dataset``, a local JSONL/CSV/Parquet file,
or a hub dataset name (online only), scored by the user's reward functions.

Rows follow TRL's prompt-only formats: *standard* (``prompt`` is text) or
*conversational* (``prompt`` is a list of ``{"role", "content"}`` messages). Every other
column is kept in :attr:`Example.data` and passed to the reward functions by name
(``f(prompts, completions, **columns)``, :mod:`tiltmatch.rewards`). A missing
``prompt`` column or a row of the wrong type is a :class:`~tiltmatch.data.DatasetError`
naming the source and the row.

Conversational prompts reach the policy as text: the system and user messages' contents
joined by blank lines, which the policy's codec then wraps in its own chat template
(as for every task). A prompt with an assistant turn (multi-turn) is rejected: the
codecs here encode one user turn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tiltmatch.data import DatasetError, read_csv, read_jsonl
from tiltmatch.rewards import PROMPT_KEY, RewardFunction, make_reward
from tiltmatch.tasks.base import Example, Task

#: file endings read as local files (anything else that is not an existing file is a hub name)
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def load_prompt_rows(source: Any) -> tuple[list[dict[str, Any]], str]:
    """Rows of ``source`` as plain dicts, and a label naming it in error messages."""
    if isinstance(source, list | tuple):
        rows = list(source)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DatasetError(f"rows given as a list: row {i} is a {type(row).__name__}")
        return rows, "rows"
    if isinstance(getattr(source, "column_names", None), dict):  # a DatasetDict
        raise DatasetError(
            f"a DatasetDict with splits {sorted(source.column_names)}: pass one split, "
            "e.g. dataset['train']"
        )
    if hasattr(source, "column_names") and hasattr(source, "to_list"):
        if PROMPT_KEY not in source.column_names:
            raise DatasetError(
                f"the dataset has no {PROMPT_KEY!r} column (columns: {source.column_names})"
            )
        return source.to_list(), "dataset"
    if not isinstance(source, str | Path):
        raise DatasetError(f"cannot read a dataset from {type(source).__name__}")
    text = str(source)
    path = Path(text).expanduser()
    if _is_local(text):
        if not path.is_file():
            raise DatasetError(f"dataset file not found: {path}")
        if path.suffix not in BUILDERS:
            raise DatasetError(
                f"{path}: unknown dataset format (use .jsonl, .json, .csv or .parquet)"
            )
        return local_rows(path), str(path)
    return _hub_rows(text), f"hub dataset {text!r}"


#: the ``datasets`` builder of each local file ending
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def local_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a local file as ``datasets.load_dataset`` reads them, so that they have
    the types a user gets elsewhere (a CSV's numbers as numbers, a JSON file holding an array
    of objects). A file ``datasets`` cannot read is read again by the package's strict reader,
    which names the line and the problem; ``datasets`` not installed: the strict readers'
    rows (CSV values as text)."""
    try:
        import datasets
    except ImportError:
        return _strict_rows(path)
    quiet = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.disable_progress_bars()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)  # errors: ours
    try:
        with tempfile.TemporaryDirectory(prefix="tiltmatch-data-") as cache:
            loaded = datasets.load_dataset(
                BUILDERS[path.suffix],
                data_files=str(path),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
            return list(loaded.to_list())
    except Exception as err:  # datasets' and pyarrow's own error types for a bad file
        _strict_rows(path)  # names the line and the problem where it can
        raise DatasetError(
            f"{path}: datasets cannot read it ({type(err).__name__}: {_one_line(err)})"
        ) from None
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
        if not quiet:
            datasets.utils.enable_progress_bars()


def _strict_rows(path: Path) -> list[dict[str, Any]]:
    """The package's own readers (every row checked, the line named)."""
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # a corrupt file: say which
            raise DatasetError(f"{path}: not a readable Parquet file ({err})") from None
    return read_jsonl(path)


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_local(text: str) -> bool:
    """Whether a source string names a local file (else it is a hub dataset name)."""
    path = Path(text).expanduser()
    return path.is_file() or text.endswith(LOCAL_SUFFIXES) or text.startswith(("/", ".", "~"))


def hub_name(source: Any) -> str | None:
    """The hub dataset a source names (``name`` of ``name:split``), None for anything else."""
    if not isinstance(source, str) or _is_local(source):
        return None
    return source.partition(":")[0]


def _hub_rows(text: str) -> list[dict[str, Any]]:
    name, _, split = text.partition(":")
    try:
        import datasets
    except ImportError as err:
        raise DatasetError(
            f"{text!r} is not a file; loading it from the hub needs the 'datasets' package"
        ) from err
    try:
        return datasets.load_dataset(name, split=split or "train").to_list()
    except Exception as err:  # offline, unknown name or split: all mean "cannot load it"
        raise DatasetError(
            f"{text!r} is not an existing file and could not be loaded from the hub "
            f"({type(err).__name__}: {err})"
        ) from err


def prompt_text(prompt: Any, where: str) -> str:
    """The text the policy is conditioned on, from a standard or conversational prompt
    (``where`` names the row in an error)."""
    if isinstance(prompt, str):
        if not prompt:
            raise DatasetError(f"{where}: the prompt is empty")
        return prompt
    if isinstance(prompt, list) and prompt:
        parts = []
        for j, message in enumerate(prompt):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DatasetError(
                    f"{where}: message {j} of the prompt is not a {{'role': str, 'content': str}} "
                    f"mapping (got {message!r})"
                )
            if message["role"] not in ("system", "user"):
                raise DatasetError(
                    f"{where}: message {j} has role {message['role']!r}; prompts may hold only "
                    "system and user messages (one turn)"
                )
            parts.append(message["content"])
        return "\n\n".join(parts)
    raise DatasetError(
        f"{where}: {PROMPT_KEY!r} must be text or a non-empty list of chat messages, "
        f"got {type(prompt).__name__} {prompt!r}"
    )


def rows_to_examples(rows: Sequence[dict[str, Any]], label: str) -> list[Example]:
    """Examples of dataset rows; the prompt column is checked row by row."""
    if not rows:
        raise DatasetError(f"{label} has no rows")
    out = []
    for i, row in enumerate(rows):
        where = f"{label}, row {i}"
        if PROMPT_KEY not in row or row[PROMPT_KEY] is None:
            columns = sorted(row)
            raise DatasetError(f"{where}: no {PROMPT_KEY!r} column (columns: {columns})")
        text = prompt_text(row[PROMPT_KEY], where)
        out.append(Example(prompt=text, data=dict(row), uid=f"{label}:{i}"))
    return out


class DatasetTask(Task):
    """Prompts from a dataset; rewards from the user's reward functions (or reward model).

    ``train`` / ``eval``: a ``datasets.Dataset``, a list of row dicts, a local
    ``.jsonl``/``.csv``/``.parquet`` path or a hub name (``name`` or ``name:split``).
    Split ``"train"`` is ``train``; ``"test"`` is ``eval`` (or, without one, the first
    rows of ``train``: the metrics are then on training prompts, and the model card says
    so); any other split string is read as a source itself.
    ``rewards``: anything :func:`tiltmatch.rewards.make_reward` takes (functions,
    ``file.py:fn`` references, reward model folders), combined with ``reward_weights``.
    ``alphabet``: the character set of a fresh character-level model (``model.base``
    unset; ``"auto"``: the prompts' characters); None when the model brings its own
    tokenizer.
    """

    name = "dataset"
    #: the response length when none is given (``max_completion_length``)
    DEFAULT_LENGTH = 32

    def __init__(
        self,
        train: Any = None,
        eval: Any = None,
        rewards: Any = None,
        reward_weights: Sequence[float] | None = None,
        reward_device: str = "cpu",
        response_length: int = DEFAULT_LENGTH,
        alphabet: str | None = None,
    ) -> None:
        if train is None:
            raise DatasetError("the dataset task needs a training dataset (task_options.train)")
        if rewards is None or (isinstance(rewards, list | tuple) and not rewards):
            raise ValueError(
                "the dataset task needs at least one reward (a function or a reward model)"
            )
        if isinstance(response_length, bool) or not isinstance(response_length, int):
            raise ValueError(f"response_length must be an integer, got {response_length!r}")
        if response_length < 1:
            raise ValueError(f"response_length must be at least 1, got {response_length}")
        if alphabet is not None and (not isinstance(alphabet, str) or not alphabet):
            raise ValueError(f"alphabet must be a non-empty string, got {alphabet!r}")
        rows, self.train_label = load_prompt_rows(train)
        self.train_examples = rows_to_examples(rows, self.train_label)
        #: the hub names the prompts came from (None: a file or an in-memory dataset)
        self.train_hub_name = hub_name(train)
        self.eval_hub_name = hub_name(eval)
        self.eval_label: str | None = None
        self.eval_examples: list[Example] | None = None
        if eval is not None:
            rows, self.eval_label = load_prompt_rows(eval)
            self.eval_examples = rows_to_examples(rows, self.eval_label)
        self.response_length = int(response_length)
        if alphabet == "auto":
            alphabet = self.prompt_alphabet()
        self.alphabet = alphabet  # type: ignore[misc]  # an instance's, not the class's
        self.reward_fn: RewardFunction = make_reward(rewards, reward_weights, reward_device)

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The first ``n`` examples of ``split`` (``train``, ``test``, or another source)."""
        if split == "train":
            pool = self.train_examples
        elif split == "test":
            pool = self.eval_examples if self.eval_examples is not None else self.train_examples
        else:
            pool = rows_to_examples(*load_prompt_rows(split))
        return list(pool if n is None else pool[:n])

    @property
    def evaluates_on_training_prompts(self) -> bool:
        """Whether held-out metrics fall back to training prompts (no eval dataset given)."""
        return self.eval_examples is None

    def reward_function(self) -> RewardFunction:
        """The user's reward (weighted sum where several)."""
        return self.reward_fn

    def reward(self, response: str, example: Example) -> float:
        """The reward of one response (a batch of one)."""
        return float(self.reward_fn([response], [example])[0])

    def checked_reward(self, response: str, example: Example) -> float:
        """:meth:`reward`: the reward function's own checks (finite; no [0, 1] bound)."""
        return self.reward(response, example)

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Mean ``reward`` (the weighted sum), and each reward function's mean and std where
        there are several."""
        parts = self.reward_fn.components(responses, examples)  # each scored once
        weights = getattr(self.reward_fn, "weights", None) or [1.0] * len(parts)
        total = torch.zeros(len(responses))
        for w, values in zip(weights, parts.values(), strict=True):
            total = total + w * values
        out = {"reward": float(total.mean()) if len(total) else 0.0}
        out["reward_std"] = float(total.std()) if len(total) > 1 else 0.0
        if len(parts) > 1:
            for name, values in parts.items():
                out[f"reward_{name}"] = float(torch.as_tensor(values).mean())
        return out

    def prompt_alphabet(self) -> str:
        """Every character of the training and eval prompts, sorted (a fresh model's alphabet)."""
        chars = {ch for e in self.train_examples for ch in e.prompt}
        for e in self.eval_examples or []:
            chars.update(e.prompt)
        return "".join(sorted(chars))


def check_prompts(task: Task, codec: Any) -> None:
    """Encode every prompt of a :class:`DatasetTask` with the policy's codec up front, so a
    prompt the tokenizer cannot encode fails before training, naming its row."""
    if not isinstance(task, DatasetTask):
        return
    for example in [*task.train_examples, *(task.eval_examples or [])]:
        try:
            codec.encode_prompt(example.prompt)
        except (ValueError, KeyError) as err:
            raise DatasetError(
                f"{example.uid}: the model's tokenizer cannot encode this prompt ({err})"
            ) from None
