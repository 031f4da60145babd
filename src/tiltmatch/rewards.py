"""The reward interface every objective sees: a batch of responses and their examples in,
one finite real number per response out (METHOD.md section 1).

Implementations:

- :class:`TaskReward`: a task's own per-response reward (the built-in tasks; in [0, 1]);
- :class:`CallableReward`: a plain function in TRL's signature,
  ``f(prompts, completions, **columns) -> list[float]``, called once per batch;
- :class:`RewardModel`: a learned reward model, a transformers
  ``AutoModelForSequenceClassification`` with one output, loaded from a local folder
  (safetensors only, no remote code) on its own device, batched, in eval mode, without
  gradients, with its own tokenizer and chat template;
- :class:`WeightedRewards`: ``sum_k w_k r_k`` of several (TRL's ``reward_weights``).

The contract is "a finite real number", not [0, 1]: anything else (NaN, inf, a
non-number, a list of the wrong length, a function that raises) is one
:class:`~tiltmatch.tasks.base.RewardError` naming the reward function and the row.

What the trainer does to rewards afterwards (tested in ``tests/test_rewards.py`` and
``tests/test_reward_baseline.py``):

1. ``train.reward_scale`` multiplies them for the training rollouts
   (:class:`ScaledReward`, applied by :class:`~tiltmatch.training.trainer.Trainer`);
2. DTM weights each completion by ``e^{h (r - b)}`` with a baseline ``b`` fixed before the
   completions it weights are drawn (METHOD.md section 5): by default the reward's declared
   :attr:`RewardFunction.lower_bound` (a task's 0), else the lowest reward of a calibration
   sample of the base model (:mod:`tiltmatch.dtm.weights`). Such a ``b`` leaves the
   stage's minimiser exactly the tilted posterior; baselines computed from the same
   rollouts they weight (a group's mean or minimum, a per-group shift of negative
   rewards, self-normalising) move it by O(1/G) and remain options named as biased.
   Rewards are never clamped;
3. the weights are formed in log space; the adaptive schedule picks ``h`` by the ESS,
   which holds the spread of the weights fixed whatever the reward's scale. With a fixed
   ``h`` and a reward of large range, the weights can overflow: that is a clear
   ``FloatingPointError`` naming the fixes (``dtm.schedule: adaptive``, a smaller
   ``train.reward_scale``, or a baseline nearer the rewards).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from tiltmatch.examples import Example, RewardError, reward_number

#: the key of :attr:`Example.data` holding a dataset row's prompt as the dataset gave it
#: (text, or a list of chat messages); the other keys are the row's extra columns.
PROMPT_KEY = "prompt"


class ScoringTask(Protocol):
    """What the rewards stage reads of a task (a :class:`~tiltmatch.tasks.base.Task` is one):
    its name and its checked reward of one response (the task's own [0, 1] check)."""

    @property
    def name(self) -> str: ...

    def checked_reward(self, response: str, example: Example) -> float: ...


def raw_prompt(example: Example) -> str | list[dict[str, str]]:
    """The prompt as the dataset gave it (chat messages for conversational rows)."""
    value = example.data.get(PROMPT_KEY)
    return value if value is not None else example.prompt


def is_conversational(example: Example) -> bool:
    """Whether the example's prompt is a list of chat messages (TRL's conversational format)."""
    return isinstance(example.data.get(PROMPT_KEY), list)


def _describe_row(i: int, examples: Sequence[Example], completions: Sequence[str]) -> str:
    uid = examples[i].uid if i < len(examples) else "?"
    text = completions[i] if i < len(completions) else "?"
    return f"row {i} (example {uid!r}, completion {text!r})"


def check_rewards(
    name: str, values: Any, completions: Sequence[str], examples: Sequence[Example]
) -> torch.Tensor:
    """``values`` as a float32 tensor ``[N]``, or a :class:`RewardError` naming the function
    and the first offending row (wrong length, not a number, NaN or inf)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    if isinstance(values, Mapping | str | bytes | set | frozenset):
        # list() of a dict is its keys, of a string its characters: never one number per row
        raise RewardError(
            f"reward function {name!r} returned a {type(values).__name__}, not a list of "
            "numbers (one per completion, in order)"
        )
    try:
        values = list(values)
    except TypeError:
        raise RewardError(
            f"reward function {name!r} returned {type(values).__name__}, not a list of numbers"
        ) from None
    if len(values) != len(completions):
        raise RewardError(
            f"reward function {name!r} returned {len(values)} values for {len(completions)} "
            "completions (it must return one number per completion)"
        )
    who = f"reward function {name!r}"
    out = [
        reward_number(value, who, ", at " + _describe_row(i, examples, completions))
        for i, value in enumerate(values)
    ]
    return torch.tensor(out, dtype=torch.float32)


def _columns_hint(err: Exception, examples: Sequence[Example]) -> str:
    """Where a reward asked for a column the dataset lacks (a ``TypeError`` about a missing
    argument), the columns the dataset has, which reach it by name."""
    if not isinstance(err, TypeError) or "argument" not in str(err) or not examples:
        return ""
    columns = sorted(k for k in examples[0].data if k != PROMPT_KEY)
    listed = ", ".join(columns) if columns else "none besides prompt"
    return f"; the dataset's columns, passed by name: {listed}"


class RewardFunction(ABC):
    """A batched reward: ``reward(completions, examples) -> float32 tensor [N]``."""

    name: str = "reward"
    #: a lower bound of every value this reward returns, declared before any is seen (DTM's
    #: exact ``bound`` baseline, METHOD.md section 5); ``None``: none is known
    lower_bound: float | None = None

    @abstractmethod
    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> Any:
        """Raw rewards of the batch (a sequence of numbers or a tensor), unchecked."""

    def __call__(self, completions: Sequence[str], examples: Sequence[Example]) -> torch.Tensor:
        """Checked rewards ``[N]``; every failure is one :class:`RewardError`."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        try:
            values = self.compute(completions, examples)
        except RewardError:
            raise
        except Exception as err:  # a user's reward may raise anything: say which one did
            first = examples[0].uid if examples else "?"
            raise RewardError(
                f"reward function {self.name!r} raised {type(err).__name__}: {err} "
                f"(on a batch of {len(completions)} completions, first example {first!r})"
                + _columns_hint(err, examples)
            ) from err
        except SystemExit as exit_:  # sys.exit() in a reward must not end the run silently
            raise RewardError(
                f"reward function {self.name!r} called sys.exit({exit_.code!r}) (on a batch of "
                f"{len(completions)} completions); a reward returns numbers"
            ) from None
        return check_rewards(self.name, values, completions, examples)

    def components(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> dict[str, torch.Tensor]:
        """Each underlying reward's values (one here; several for :class:`WeightedRewards`)."""
        return {self.name: self(completions, examples)}


class TaskReward(RewardFunction):
    """A task's own reward, one response at a time (what the trainer always did)."""

    #: a task's reward is in [0, 1] (:meth:`~tiltmatch.tasks.base.Task.checked_reward`)
    lower_bound = 0.0

    def __init__(self, task: ScoringTask) -> None:
        self.task = task
        self.name = task.name

    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """``task.checked_reward`` of each response: the task's own [0, 1] check applies."""
        return [self.task.checked_reward(t, e) for t, e in zip(completions, examples, strict=True)]


def reward_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """The extra dataset columns of a batch, as TRL passes them: ``{column: [value per row]}``.

    Only columns every row has are passed (the task's own fields of built-in tasks too).
    """
    if not examples:
        return {}
    keys = [k for k in examples[0].data if k != PROMPT_KEY]
    keys = [k for k in keys if all(k in e.data for e in examples)]
    return {k: [e.data[k] for e in examples] for k in keys}


class CallableReward(RewardFunction):
    """A plain function ``f(prompts, completions, **columns) -> list[float]`` (TRL's signature).

    ``prompts`` are the rows' prompts as the dataset gave them; ``completions`` the
    decoded responses (for conversational rows, ``[{"role": "assistant", "content": text}]``
    each, as TRL does); ``columns`` every other column of the dataset, one list each.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"reward function {fn!r} is not callable")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        # A function may declare its bound as an attribute (``f.lower_bound = -1.0``).
        bound = getattr(fn, "lower_bound", None)
        self.lower_bound = float(bound) if isinstance(bound, int | float) else None

    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> Any:
        """One call of the function on the whole batch."""
        prompts = [raw_prompt(e) for e in examples]
        shaped: list[Any] = [
            [{"role": "assistant", "content": t}] if is_conversational(e) else t
            for t, e in zip(completions, examples, strict=True)
        ]
        return self.fn(prompts=prompts, completions=shaped, **reward_columns(examples))


class RewardModelError(ValueError):
    """A reward model folder that cannot be used (missing, wrong head, tokenizer mismatch)."""


class RewardModel(RewardFunction):
    """A learned reward model: ``AutoModelForSequenceClassification`` with one output.

    ``model``: a local folder (``save_pretrained`` layout with safetensors weights and a
    tokenizer), or a loaded model with ``tokenizer``. The model lives on ``device``,
    in eval mode, without gradients; texts are scored ``batch_size`` at a time. A
    conversational row is rendered with the reward model's own chat template (prompt
    messages plus the completion as the assistant turn) where it has one; otherwise a
    row's text is its prompt followed by the completion, as TRL's reward models see it.
    """

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_length: int | None = None,
        name: str | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        where = "the given reward model"
        if isinstance(model, str | Path):
            folder = Path(model).expanduser()
            where = f"reward model {str(folder)!r}"
            if not (folder / "config.json").is_file():
                raise RewardModelError(f"{where}: no config.json (not a model folder)")
            if not any(folder.glob("*.safetensors")):
                raise RewardModelError(
                    f"{where}: no safetensors weights (pickled weights are never loaded)"
                )
            try:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    folder, use_safetensors=True, trust_remote_code=False, output_loading_info=True
                )
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
            except Exception as err:  # a truncated file raises safetensors' own error types
                text = " ".join(str(err).split())[:300]
                raise RewardModelError(
                    f"{where} cannot be loaded ({type(err).__name__}: {text})"
                ) from None
            if missing := sorted(str(k) for k in info.get("missing_keys") or []):
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise RewardModelError(
                    f"{where}: its checkpoint has no weights for {missing[0]!r}{more}, which "
                    "would start random: a reward model is a trained sequence classifier (a "
                    "causal LM's folder has no score head)"
                )
            name = name or folder.name
        if tokenizer is None:
            raise RewardModelError(f"{where}: a loaded reward model needs its tokenizer")
        self.name = name or type(model).__name__
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = int(batch_size), max_length
        self._check(where)
        from tiltmatch.model_checks import check_finite_weights

        check_finite_weights(self.model, where)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _check(self, where: str) -> None:
        config = self.model.config
        if int(getattr(config, "num_labels", 1)) != 1:
            raise RewardModelError(
                f"{where} has {config.num_labels} outputs; a reward model has one (num_labels=1)"
            )
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardModelError(f"{where}: its tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(config, "pad_token_id", None) is None:
            # Sequence classification reads the score at the last non-padding token.
            config.pad_token_id = self.tokenizer.pad_token_id
        rows = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            raise RewardModelError(
                f"{where}: its tokenizer has {len(self.tokenizer)} tokens but the model's "
                f"embedding has {rows} rows (the tokenizer does not belong to this model)"
            )

    def texts(self, completions: Sequence[str], examples: Sequence[Example]) -> list[str]:
        """The text the reward model scores for each row."""
        template = getattr(self.tokenizer, "chat_template", None)
        out = []
        for t, e in zip(completions, examples, strict=True):
            prompt = raw_prompt(e)
            if isinstance(prompt, list):
                messages = [*prompt, {"role": "assistant", "content": t}]
                if template:
                    out.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
                else:
                    out.append("\n".join(m["content"] for m in prompt) + t)
            else:
                out.append(prompt + t)
        return out

    @torch.inference_mode()
    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> torch.Tensor:
        """Scores of the batch, ``batch_size`` rows per forward."""
        texts = self.texts(completions, examples)
        scores = []
        for lo in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[lo : lo + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
            )
            enc = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"}
            scores.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


class WeightedRewards(RewardFunction):
    """``sum_k w_k r_k`` of several reward functions (TRL's ``reward_weights``; default 1 each)."""

    def __init__(
        self, functions: Sequence[RewardFunction], weights: Sequence[float] | None = None
    ) -> None:
        if not functions:
            raise ValueError("no reward functions given")
        weights = [1.0] * len(functions) if weights is None else [float(w) for w in weights]
        if len(weights) != len(functions):
            raise ValueError(f"{len(weights)} reward_weights for {len(functions)} reward functions")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"reward_weights must be finite numbers, got {weights}")
        self.functions, self.weights = list(functions), weights
        names: list[str] = []
        for f in self.functions:  # unique names, so each component is logged on its own
            base, k = f.name, 2
            while f.name in names:
                f.name, k = f"{base}_{k}", k + 1
            names.append(f.name)
        self.name = "+".join(names)
        # sum_k w_k r_k >= sum_k w_k lo_k when every weight is >= 0 and every part declares lo_k
        bounds = [f.lower_bound for f in self.functions]
        if all(w >= 0 for w in weights) and not any(b is None for b in bounds):
            self.lower_bound = sum(w * (b or 0.0) for w, b in zip(weights, bounds, strict=True))

    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> torch.Tensor:
        """The weighted sum (each component checked on its own first)."""
        parts = self.components(completions, examples)
        total = torch.zeros(len(completions), dtype=torch.float32)
        for w, values in zip(self.weights, parts.values(), strict=True):
            total = total + w * values
        return total

    def components(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> dict[str, torch.Tensor]:
        """Each function's checked, unweighted values."""
        return {f.name: f(completions, examples) for f in self.functions}


class ScaledReward(RewardFunction):
    """``factor * r`` of another reward (``train.reward_scale``: the Sudoku recipe's "2 x cell
    accuracy", METHOD.md section 6). Training rollouts are scored through it; held-out
    metrics stay in the reward's own units. A declared lower bound scales with it."""

    def __init__(self, reward: RewardFunction, factor: float) -> None:
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"a reward scale must be a finite number > 0, got {factor!r}")
        self.reward, self.factor, self.name = reward, float(factor), reward.name
        bound = reward.lower_bound
        self.lower_bound = None if bound is None else bound * self.factor

    def compute(self, completions: Sequence[str], examples: Sequence[Example]) -> torch.Tensor:
        """The inner reward's checked values times the factor."""
        return self.reward(completions, examples) * self.factor


def scaled(reward: RewardFunction, factor: float) -> RewardFunction:
    """``reward`` scaled by ``factor`` (the reward itself when the factor is 1)."""
    return reward if factor == 1.0 else ScaledReward(reward, factor)


def as_reward_function(
    reward: Any, device: str | torch.device = "cpu", tokenizer: Any = None
) -> RewardFunction:
    """One :class:`RewardFunction` from what a user passes.

    A :class:`RewardFunction` as is; a folder path: a :class:`RewardModel`;
    ``"file.py:fn"`` or ``"module:fn"``: that function (importing runs the user's own
    file, at their request); a ``PreTrainedModel``: a reward model with ``tokenizer``;
    any other callable: a :class:`CallableReward`.
    """
    from tiltmatch.plugins import is_reference, load_object

    if isinstance(reward, RewardFunction):
        return reward
    if isinstance(reward, str | Path):
        text = str(reward)
        if Path(text).expanduser().is_dir():
            return RewardModel(text, device=device)
        if is_reference(text):
            from tiltmatch.plugins import PluginError

            try:
                loaded = load_object(text, what="reward function")
            except PluginError as err:
                raise RewardError(f"reward function {text!r} cannot be loaded: {err}") from None
            return as_reward_function(loaded, device)
        raise RewardError(
            f"reward {text!r} is neither a reward model folder nor 'file.py:function' / "
            "'module:function'"
        )
    if hasattr(reward, "config") and hasattr(reward, "get_input_embeddings"):
        return RewardModel(reward, tokenizer=tokenizer, device=device)
    if callable(reward):
        return CallableReward(reward)
    raise RewardError(f"cannot use {reward!r} as a reward function")


def make_reward(
    reward_funcs: Any,
    reward_weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    tokenizers: Mapping[int, Any] | None = None,
) -> RewardFunction:
    """The reward of ``reward_funcs`` (one, or a list combined with ``reward_weights``)."""
    items = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else [reward_funcs]
    tokenizers = tokenizers or {}
    functions = [as_reward_function(r, device, tokenizers.get(i)) for i, r in enumerate(items)]
    if len(functions) == 1 and reward_weights is None:
        return functions[0]
    return WeightedRewards(functions, reward_weights)


def char_level_tokenizer(alphabet: str, chat_template: str | None = None) -> Any:
    """A Hugging Face fast tokenizer over single characters (``<pad>``, ``<eos>``, ``<unk>``
    first), for small reward models on the character-level tasks (the RLHF example)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *dict.fromkeys(alphabet)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def task_reward_function(task: ScoringTask) -> RewardFunction:
    """The batched reward the trainer calls for ``task``: the task's own
    ``reward_function()`` where it defines one (a dataset task with the user's rewards),
    else :class:`TaskReward` over its :meth:`~tiltmatch.tasks.base.Task.reward`."""
    own = getattr(task, "reward_function", None)
    return own() if callable(own) else TaskReward(task)
