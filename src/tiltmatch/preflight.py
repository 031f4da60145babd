"""Bound before you allocate: one resource preflight for every command.

Before a command builds a prompt pool, loads a model or samples a token, it estimates
what its settings will need: the model (parameters x bytes x the copies training keeps),
one sampling forward (rows x tokens x hidden size, the attention scores, the logits of
the open positions: rows x block x vocabulary), one update's stored activations, the
replay buffer and held-out sets. An estimate above the machine's memory (physical memory,
or a GPU's; or the cap in ``$TILTMATCH_MEMORY_LIMIT``) is refused with one line naming the
settings it comes from and the estimate. The figures follow what the code allocates
(activations after Korthikanti et al.'s ``34 s b h + 5 a s^2 b`` bytes per layer at 16 bits);
they are meant to catch settings that cannot fit, not to predict a peak to the byte.

Work that passes runs with progress shown: :class:`Heartbeat` draws an elapsed-time bar,
within seconds, around a phase that shows nothing of its own (building a prompt pool,
loading a model, filling a replay buffer).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from tiltmatch.models.codecs import PromptCodec
    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.tasks.base import Example, Task
    from tiltmatch.training.config import RunConfig

#: an explicit memory cap (bytes, or with a unit: ``8GiB``, ``500MB``) below the machine's
MEMORY_LIMIT_ENV = "TILTMATCH_MEMORY_LIMIT"
#: bytes a Python int in a list of token ids costs (the object and its pointer)
PY_TOKEN_BYTES = 36
#: bytes a Python object per row costs at least (a tuple, a small string)
PY_ROW_BYTES = 120
#: bytes per parameter of a weight dtype (``model.dtype``; 4-bit bases pack two per byte)
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.5}
#: seconds one example may take to build before the pool of them is refused
EXAMPLE_SECONDS = 20.0

T = TypeVar("T")


class ResourceError(ValueError):
    """Settings whose estimated memory exceeds the machine: the message names them."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a transformer denoiser, read from a config without building it."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int | None = None
    #: heads of keys and values (grouped-query attention; None: ``heads``)
    kv_heads: int | None = None

    @property
    def parameters(self) -> int:
        """Embedding and head (untied), attention and MLP projections of every layer."""
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate
        return 2 * self.vocab * self.hidden + self.layers * (per_layer + 2 * self.hidden)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> ModelShape:
        """From a ``config.json`` dict or a transformers config (Llama, Qwen, LLaDA names)."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)

        def first(*names: str, default: int = 0) -> int:
            for name in names:
                value = get(name, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            return default

        hidden = first("hidden_size", "d_model", default=1)
        positions = first("max_position_embeddings", "max_sequence_length")
        return cls(
            vocab=first("vocab_size", "embedding_size", default=1),
            hidden=hidden,
            layers=first("num_hidden_layers", "n_layers", default=1),
            heads=first("num_attention_heads", "n_heads", default=1),
            intermediate=first("intermediate_size", "mlp_hidden_size", default=4 * hidden),
            max_positions=positions or None,
            kv_heads=first("num_key_value_heads", "n_kv_heads") or None,
        )

    @property
    def kv_width(self) -> int:
        """Channels of one layer's keys (equally values) per token."""
        return (self.kv_heads or self.heads) * (self.hidden // self.heads)


@dataclass(frozen=True)
class Need:
    """One estimated allocation: what it is, its bytes, and the settings it comes from.

    ``host``: held in the machine's memory even when the model is on a GPU (Python lists,
    the replay buffer's rows). ``phase``: None for what is held throughout (the model, the
    buffers); else the phase it is allocated in (``"sampling"``, ``"update"``, ...): phases
    come one after another, so only the largest one counts on top of the rest.
    """

    what: str
    nbytes: float
    knobs: str
    host: bool = False
    phase: str | None = None
    fix: str = "lower these settings"


def format_bytes(n: float) -> str:
    """``3.2 GiB``, ``64 TiB``: bytes for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"500 MB"``, ``"1e9"`` -> bytes (:class:`ResourceError` when unreadable)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGTP]?)(i?B?)\s*", text)
    try:
        value = float(match.group(1)) if match else -1.0
    except ValueError:
        value = -1.0
    if match is None or not value > 0:
        raise ResourceError(f"${MEMORY_LIMIT_ENV}={text!r} is not a size such as 8GiB or 500MB")
    scale = 1024 if match.group(3).startswith("i") else 1000
    return int(value * scale ** " KMGTP".index(match.group(2) or " "))


def memory_budget(device: Any = "cpu") -> tuple[int, str]:
    """Bytes a command may use on ``device``, and where the figure comes from."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = int(torch.cuda.get_device_properties(index).total_memory)
        where = f"GPU {index} has"
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = "this machine has"
    cap = os.environ.get(MEMORY_LIMIT_ENV)
    if cap:
        limit = parse_bytes(cap)
        if limit < total:
            return limit, f"${MEMORY_LIMIT_ENV} allows"
    return total, where


def refuse_over(needs: Sequence[Need], device: Any = "cpu") -> None:
    """:class:`ResourceError` naming the largest need of a budget that the needs exceed
    (on a GPU, the host's needs are weighed against the machine's memory apart)."""
    on_gpu = str(device).startswith("cuda")
    groups = (
        [(needs, device)]
        if not on_gpu
        else [
            ([n for n in needs if not n.host], device),
            ([n for n in needs if n.host], "cpu"),
        ]
    )
    for group, where_device in groups:
        if not group:
            continue
        budget, where = memory_budget(where_device)
        held = [n for n in group if n.phase is None]
        phases: dict[str, list[Need]] = {}
        for n in group:
            if n.phase is not None:
                phases.setdefault(n.phase, []).append(n)
        peak = max(phases.values(), key=lambda ns: sum(n.nbytes for n in ns), default=[])
        total = sum(n.nbytes for n in [*held, *peak])
        if total <= budget:
            continue
        worst = max([*held, *peak], key=lambda n: n.nbytes)
        rest = f" ({format_bytes(total)} with the rest)" if total > worst.nbytes * 1.05 else ""
        raise ResourceError(
            f"{worst.knobs}: {worst.what} would take about {format_bytes(worst.nbytes)} of "
            f"memory{rest}; {where} {format_bytes(budget)}: {worst.fix}"
        )


def model_need(shape: ModelShape, knobs: str, bytes_per_param: float, copies: float) -> Need:
    """The weights (and, training, their gradients and optimiser moments): ``copies`` per
    parameter."""
    return Need(
        f"the model ({shape.parameters:.3g} parameters x {copies:g} copies)",
        shape.parameters * bytes_per_param * copies,
        knobs,
    )


def training_copies(full_copies: int, lora: bool) -> float:
    """Per-parameter copies of a training run: ``full_copies`` weight copies (student,
    teacher, reference, EMA) plus a gradient and two AdamW moments; under LoRA the base
    is held once and the adapters are small."""
    return 1.0 if lora else full_copies + 3.0


def layer_activation_bytes(rows: int, tokens: int, shape: ModelShape, width: float) -> float:
    """One layer's activations for a backward pass (``34 s b h + 5 a s^2 b`` at 16 bits)."""
    per16 = 34 * tokens * rows * shape.hidden + 5 * shape.heads * tokens * tokens * rows
    return per16 * width / 2


def forward_need(
    what: str,
    knobs: str,
    rows: int,
    tokens: int,
    logit_rows: int,
    shape: ModelShape,
    width: float,
    phase: str = "sampling",
) -> Need:
    """One forward without gradients: a layer's hidden states and attention scores at a
    time, and the vocabulary work of ``logit_rows`` open positions (the sampler's float32
    logits, their float64 copy, softmax and uniforms: 36 bytes a token)."""
    hidden = rows * tokens * (4 * shape.hidden + 3 * shape.intermediate) * width
    scores = shape.heads * tokens * tokens * rows * width
    return Need(
        f"{what} ({rows} rows x {tokens} tokens)",
        hidden + scores + logit_rows * shape.vocab * 36.0,
        knobs,
        phase=phase,
    )


def update_need(
    knobs: str, rows: int, tokens: int, response: int, shape: ModelShape, width: float
) -> Need:
    """One micro-batch's forward and backward: every layer's activations are kept, and the
    response logits with their log-softmax and gradient."""
    activations = shape.layers * layer_activation_bytes(rows, tokens, shape, width)
    logits = rows * response * shape.vocab * 12.0
    return Need(
        f"one update's activations ({rows} completions x {tokens} tokens x "
        f"{shape.layers} layer(s))",
        activations + logits,
        knobs,
        phase="update",
    )


def noise_need(
    knobs: str,
    rows: int,
    length: int,
    vocab: int,
    section: str = "sampler",
    phase: str = "sampling",
) -> Need:
    """The sampler's compatible Gumbel noise off the CPU: float64 uniforms for every response
    position of every row (``sampler.noise=lean`` draws them at the open positions only).
    ``knobs`` name the rows; the message adds the noise setting of config ``section``."""
    return Need(
        f"the sampler's float64 noise ({rows} rows x {length} positions x {vocab} tokens)",
        rows * length * vocab * 8.0,
        f"{knobs} with {section}.noise=compatible on a GPU",
        phase=phase,
        fix=f"set {section}.noise=lean (the same distribution, noise drawn at the open "
        "positions only) or lower these settings",
    )


def cache_need(
    knobs: str,
    rows: int,
    tokens: int,
    shape: ModelShape,
    width: float,
    section: str = "sampler",
    phase: str = "sampling",
) -> Need:
    """The cached modes' keys and values (``sampling/cache.py``): every layer's, for every
    prompt and response column of every row, held for the whole ``generate`` call.
    ``knobs`` name the rows and the mode; ``section``: the config section whose
    ``batch_rows`` bounds the rows."""
    nbytes = rows * tokens * shape.layers * 2 * shape.kv_width * width
    return Need(
        f"the sampler's cached keys and values ({rows} rows x {tokens} tokens x "
        f"{shape.layers} layer(s))",
        nbytes,
        knobs,
        phase=phase,
        fix=f"set {section}.batch_rows (the rows one generate call decodes at once; about "
        f"{format_bytes(nbytes / rows)} a row here) or lower these settings",
    )


def keeps_a_cache(sampler: SamplingConfig) -> bool:
    """Whether ``sampler``'s mode holds keys and values across steps (:func:`cache_need`)."""
    from tiltmatch.sampling.registry import sampler_class

    return "window_cache" in sampler_class(sampler.mode).needs


def rows_need(what: str, knobs: str, rows: int, tokens: int) -> Need:
    """Rows held as tensors and Python lists (a buffer, a held-out set, responses)."""
    nbytes = rows * (PY_ROW_BYTES + tokens * (PY_TOKEN_BYTES + 24))
    return Need(f"{what} ({rows} rows)", nbytes, knobs, host=True)


def check_steps(steps: int, response_length: int, knob: str, parallel: bool = False) -> None:
    """Refuse more sampler steps than response tokens: a step commits at least one token,
    so the steps past that commit none and only cost time (a loop of 10^9 empty steps)."""
    if not parallel and steps > response_length:
        raise ResourceError(
            f"{knob}={steps} exceeds the {response_length}-token response: a step commits at "
            f"least one token, so at most {response_length} steps do any work"
        )


def check_positions(
    prompt_tokens: int, response_length: int, shape: ModelShape | None, knobs: str
) -> None:
    """Refuse prompts plus responses longer than the model's positions, before any pool of
    such prompts is built."""
    limit = shape.max_positions if shape is not None else None
    if limit is not None and prompt_tokens + response_length > limit:
        raise ResourceError(
            f"{knobs}: a prompt of {prompt_tokens} tokens plus a {response_length}-token "
            f"response needs {prompt_tokens + response_length} positions; the model has "
            f"{limit} (max_position_embeddings)"
        )


class _TooSlow(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` when the block runs longer than ``seconds`` (main thread
    on Unix; elsewhere the block runs unbounded)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow:
        raise TimeoutError(f"took longer than {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def probe_examples(build: Callable[[], T], knobs: str, total: int) -> T:
    """Build one example (``build``) within :data:`EXAMPLE_SECONDS`, or refuse: a pool of
    ``total`` such examples would take hours with no output."""
    try:
        with time_limit(EXAMPLE_SECONDS):
            return build()
    except TimeoutError:
        raise ResourceError(
            f"{knobs}: building one example took longer than {EXAMPLE_SECONDS:g} s; the "
            f"{total} examples the run needs would take hours"
        ) from None


class Heartbeat:
    """An elapsed-time bar for a phase that shows nothing of its own, drawn once the phase
    has run ``delay`` seconds and refreshed every second until it ends."""

    def __init__(self, description: str, quiet: bool = False, delay: float = 2.0) -> None:
        self.description, self.quiet, self.delay = description, quiet, delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        if self._stop.wait(self.delay):
            return
        started = time.monotonic() - self.delay
        bar = tqdm(desc=self.description, bar_format="{desc}: {elapsed}", leave=False)
        while not self._stop.wait(1.0):
            bar.set_description_str(f"{self.description} ({time.monotonic() - started:.0f} s)")
        bar.close()

    def __enter__(self) -> Heartbeat:
        if not self.quiet:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -- a training run (tiltmatch train, the demo, the Python API) ---------------------------------

#: the tiny models' positions (TinyModelSpec.max_positions)
TINY_POSITIONS = 256
#: special tokens of the character tokenizer (pad, mask, eos)
CHAR_SPECIALS = 3


def _sizes(config: RunConfig) -> str:
    m = config.model
    return (
        f"model.hidden_size={m.hidden_size}, model.num_layers={m.num_layers}, "
        f"model.intermediate_size={m.intermediate_size}"
    )


def run_model_shape(config: RunConfig, task: Task) -> tuple[ModelShape | None, str]:
    """The shape of the run's model before it is built or loaded, and the settings naming it
    (None when a base folder's config cannot be read: loading will say why)."""
    m = config.model
    if m.base is None:
        vocab = len(task.alphabet or "") + CHAR_SPECIALS
        shape = ModelShape(
            vocab, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, TINY_POSITIONS
        )
        return shape, _sizes(config)
    import json

    from tiltmatch.models.loading import resolve_model_path

    try:
        cfg = json.loads((resolve_model_path(m.base) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None, f"model.base={m.base}"
    return ModelShape.from_config(cfg), f"model.base={m.base}"


def _weight_bytes(config: RunConfig) -> float:
    return DTYPE_BYTES["4bit" if config.model.load_in_4bit else config.model.dtype]


def _check_run_steps(config: RunConfig, task: Task) -> None:
    length = task.response_length
    check_steps(config.sampler.steps, length, "sampler.steps", _steps_inert(config.sampler))
    if config.eval.sampler is not None:
        sampler = config.eval.sampler
        check_steps(sampler.steps, length, "eval.sampler.steps", _steps_inert(sampler))


def _steps_inert(sampling: Any) -> bool:
    """Whether the sampler's mode decides its steps itself (the confidence-driven modes)."""
    from tiltmatch.sampling.registry import sampler_class

    return not sampler_class(sampling.mode).fixed_steps


def preflight_run_before_load(config: RunConfig, task: Task, copies: float) -> Example:
    """What a run can be refused for before its model is loaded and its pools built: sampler
    steps, the model's size (``copies`` per parameter, :func:`training_copies`), and one
    example of the task built within :data:`EXAMPLE_SECONDS` (returned: its prompt sizes
    the rest)."""
    _check_run_steps(config, task)
    shape, knobs = run_model_shape(config, task)
    if shape is not None:
        refuse_over([model_need(shape, knobs, _weight_bytes(config), copies)], _run_device())
    total = config.train.train_examples + config.eval.examples
    options = ", ".join(f"{k}={v!r}" for k, v in config.task_options.items())
    where = f"task {config.task}" + (f" (task_options {options})" if options else "")
    examples = probe_examples(
        lambda: task.examples(config.train.train_split, 1, config.seed), where, total
    )
    if not examples:
        from tiltmatch.data import DatasetError

        raise DatasetError(
            f"{where}: split {config.train.train_split!r} has no examples to train on"
        )
    return examples[0]


def _run_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prompt_tokens(task: Task, codec: PromptCodec, probe: Example) -> int:
    """The longest prompt in tokens: every prompt of a dataset task, else the probe's."""
    from tiltmatch.tasks.dataset import DatasetTask

    prompts = [probe.prompt]
    if isinstance(task, DatasetTask):
        prompts += [e.prompt for e in [*task.train_examples, *(task.eval_examples or [])]]
    return max(len(codec.encode_prompt(p)) for p in prompts)


def sampler_needs(
    what: str,
    phase: str,
    sampler: SamplingConfig,
    section: str,
    knobs: str,
    total: int,
    tokens: int,
    response: int,
    shape: ModelShape,
    width: float,
    gpu: bool,
) -> list[Need]:
    """What a rollout worker's ``generate`` call holds for ``total`` prompts decoded with
    ``sampler`` (the run config's ``section``), in the rows it decodes at once
    (:func:`~tiltmatch.sampling.config.rows_per_call`): one forward, the compatible noise
    on a GPU, and a cached mode's keys and values. ``knobs`` name the ``total`` rows."""
    from tiltmatch.sampling.config import rows_per_call

    rows = min(rows_per_call(sampler), total)
    if sampler.batch_rows is not None and rows < total:
        knobs = f"{section}.batch_rows={sampler.batch_rows}"
    block = min(sampler.block_length, response)
    needs = [forward_need(what, knobs, rows, tokens, rows * block, shape, width, phase=phase)]
    if gpu and sampler.noise == "compatible" and sampler.temperature > 0:
        needs.append(noise_need(knobs, rows, response, shape.vocab, section, phase))
    if keeps_a_cache(sampler):
        mode = f"{knobs} with {section}.mode={sampler.mode}"
        needs.append(cache_need(mode, rows, tokens, shape, width, section, phase))
    return needs


def run_needs(
    config: RunConfig, shape: ModelShape, tokens: int, response: int, width: float, gpu: bool
) -> list[Need]:
    """The allocations of a run past its model: rollouts, buffer, updates, evaluation
    (``gpu``: the sampler's generator is off the CPU, see :func:`noise_need`)."""
    tc, ec = config.train, config.eval
    group = f"train.buffer_prompts={tc.buffer_prompts} x train.num_generations="
    group += str(tc.num_generations)
    buffered = tc.buffer_prompts * tc.num_generations
    needs = sampler_needs(
        "one sampling forward",
        "sampling",
        config.sampler,
        "sampler",
        group,
        buffered,
        tokens,
        response,
        shape,
        width,
        gpu,
    )
    needs.append(rows_need("the replay buffer", group, buffered, tokens))
    if config.method == "dtm" and config.dtm.states == "trajectory":
        visited = config.sampler.steps * buffered * response * 8.0
        needs.append(
            Need(
                "the recorded sampler canvases",
                visited,
                f"sampler.steps={config.sampler.steps} x {group}",
            )
        )
    if tc.micro_batch == "completions":
        micro, knob = tc.per_device_train_batch_size or 1, "train.per_device_train_batch_size="
        knob += str(micro)
    else:
        micro = tc.prompts_per_batch * tc.num_generations
        knob = f"train.prompts_per_batch={tc.prompts_per_batch} x train.num_generations="
        knob += str(tc.num_generations)
    needs.append(update_need(knob, micro, tokens, response, shape, width))
    held = ec.examples * ec.samples_per_example
    eval_knob = f"eval.examples={ec.examples} x eval.samples_per_example={ec.samples_per_example}"
    section = "eval.sampler" if ec.sampler is not None else "sampler"
    needs += sampler_needs(
        "one evaluation forward",
        "evaluation",
        config.evaluation_sampler(),
        section,
        eval_knob,
        held,
        tokens,
        response,
        shape,
        width,
        gpu,
    )
    needs.append(rows_need("the held-out responses", eval_knob, held, tokens))
    return needs


def preflight_run(
    config: RunConfig, task: Task, codec: PromptCodec, model: Any, probe: Example, copies: float
) -> None:
    """After the model is loaded, before any pool, buffer or forward: positions and memory
    (``copies`` per parameter, as for :func:`preflight_run_before_load`)."""
    shape = ModelShape.from_config(model.config)
    response = task.response_length
    tokens = _prompt_tokens(task, codec, probe)
    options = ", ".join(f"{k}={v!r}" for k, v in config.task_options.items() if k != "rewards")
    where = f"task {config.task}" + (f" (task_options {options})" if options else "")
    check_positions(tokens, response, shape, where)
    first = next(iter(model.parameters()), None)
    width = DTYPE_BYTES[config.model.dtype]
    _, knobs = run_model_shape(config, task)
    needs = [model_need(shape, knobs, _weight_bytes(config), copies)]
    device = getattr(first, "device", "cpu")
    gpu = str(device) != "cpu" or _run_device() != "cpu"
    needs += run_needs(config, shape, tokens + response, response, width, gpu)
    refuse_over(needs, _run_device())
