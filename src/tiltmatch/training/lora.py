"""LoRA student and teacher: two adapters on one frozen base (METHOD.md section 6).

A DTM stage needs three denoisers at once: the student being trained, the
teacher ``mu_ref`` (the model at the start of the stage, which also samples the
rollouts) and, for the baselines' KL terms, the base ``p_0``. For LLaDA-8B three
full copies do not fit, so :class:`LoRAPair` holds the base **once**, frozen,
with two PEFT LoRA adapters on it, ``student`` and ``teacher``; the base with
the adapters disabled is the reference. Each of ``student``, ``teacher`` and
``reference()`` is a :class:`~tiltmatch.models.denoiser.MaskedDenoiser` that routes its
forward through its own adapter.

Two PEFT behaviours this module guards against:

- ``set_adapter`` makes the adapter it activates trainable and every other one
  frozen. Here trainability is fixed once: the student adapter trains, the
  teacher adapter and the base never do, whatever adapter a forward uses.
- With activation checkpointing the student's forward is recomputed during
  ``backward``, after the teacher's forward has run. Every teacher or reference
  forward therefore hands the model back to the student adapter (and to the
  train/eval mode it found), so the recomputation is the student's.

Also here: activation checkpointing (``model.gradient_checkpointing``). The other
large-model options of ``model:`` (the weights' dtype, a 4-bit base via
bitsandbytes) are applied while loading, in :mod:`tiltmatch.models.quantisation`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import Cache, PreTrainedModel

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.family import lora_target_modules
from tiltmatch.training.config import LoRAConfig, RunConfig
from tiltmatch.training.pair import DenoiserPair

STUDENT, TEACHER = "student", "teacher"
ADAPTERS = (STUDENT, TEACHER)


def _require_peft():
    try:
        import peft
    except ImportError as err:  # peft is in the "llm" extra, not a core dependency
        raise ImportError("LoRA fine-tuning needs peft: pip install 'tiltmatch[llm]'") from err
    return peft


def peft_lora_config(settings: LoRAConfig):
    """The ``peft.LoraConfig`` of the run config's ``lora:`` section."""
    peft = _require_peft()
    return peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
    )


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant checkpoints).

    Non-reentrant, because the reentrant variant gives no gradient to adapter
    weights when no input of the checkpointed segment requires grad (the base is
    frozen). Checkpointing is active in train mode only, so the teacher's and the
    sampler's forwards (eval mode) keep their activations as usual.
    """
    kwargs = {"use_reentrant": False}
    # transformers 5 renamed gradient_checkpointing_enable (now a deprecated alias).
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class AdapterDenoiser(MaskedDenoiser):
    """The shared PEFT model seen through one adapter (``None``: the bare base).

    A frozen view (teacher, reference) runs without gradients and in eval mode,
    then hands the model back to the student adapter and to its previous mode.
    """

    def __init__(self, owner: LoRAPair, adapter: str | None, frozen: bool) -> None:
        super().__init__(owner.peft_model, owner.mask_token_id, owner.pad_token_id)
        # A plain attribute, not a submodule: the owner is no nn.Module.
        self._owner = owner
        self.adapter = adapter
        self.frozen = frozen

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` on the response positions, through this view's adapter.

        ``cache``, ``position_ids``, ``logits_at``: the sampler's hooks, as in
        :meth:`MaskedDenoiser.forward` (a cache holds this adapter's keys and values).
        """
        owner = self._owner
        if owner._pinned is not None and owner._pinned != (self.adapter,):
            raise RuntimeError(
                f"adapter {owner._pinned[0]!r} is held by a sampling session; "
                f"the {self.adapter!r} view cannot run inside it"
            )
        if not self.frozen:
            owner._select(self.adapter)
            return super().forward(
                input_ids, attention_mask, response_length, cache, position_ids, logits_at
            )
        if owner._pinned is not None and not self.model.training:  # inside session()
            with torch.no_grad():
                return super().forward(
                    input_ids, attention_mask, response_length, cache, position_ids, logits_at
                )
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._owner._using(self.adapter):
                return super().forward(
                    input_ids, attention_mask, response_length, cache, position_ids, logits_at
                )
        finally:
            self.model.train(was_training)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold this view's adapter for many forwards (the sampler's loop), then hand back.

        Switching adapters walks every LoRA layer; the sampler's 128 forwards of
        an 8B model would otherwise switch 256 times. Only this view may run
        inside the session.
        """
        owner = self._owner
        if owner._pinned is not None:
            raise RuntimeError(f"adapter {owner._pinned[0]!r} already holds a session")
        if not self.frozen:  # the student is the resting adapter: nothing to hold
            yield
            return
        with owner._using(self.adapter):
            owner._pinned = (self.adapter,)
            try:
                yield
            finally:
                owner._pinned = None


class LoRAPair(DenoiserPair):
    """Student and teacher as two LoRA adapters on one frozen base model.

    ``model``: the base (any family's transformers model, already in its
    dtype and on its device; PEFT injects the adapters into it in place).
    ``ema_decay``: when set, the teacher becomes an EMA of the student at each
    phase boundary instead of the student itself (the EMA is kept as plain
    float32 tensors, updated after every optimiser update). ``ema_student``: the
    student takes the EMA weights at the boundary as well (the published Countdown recipe).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        mask_token_id: int,
        pad_token_id: int,
        settings: LoRAConfig | None = None,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        ema_student: bool = False,
    ) -> None:
        peft = _require_peft()
        if ema_student and ema_decay is None:
            raise ValueError("ema_student needs an EMA (ema_decay)")
        self.ema_student = ema_student
        settings = settings or LoRAConfig.model_validate({})  # the recipes' defaults
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        self.mask_token_id, self.pad_token_id = int(mask_token_id), int(pad_token_id)
        model.requires_grad_(False)
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        # Family-aware: a target name that matches no module of this architecture is refused.
        lora_target_modules(model, list(settings.target_modules))
        lora = peft_lora_config(settings)
        self.peft_model = peft.get_peft_model(model, lora, adapter_name=STUDENT)
        self.peft_model.add_adapter(TEACHER, lora)
        self._active: str | None = None
        #: ``(adapter,)`` while a frozen view holds a sampling session (``(None,)``: the base)
        self._pinned: tuple[str | None] | None = None
        self._select(STUDENT)
        self._params = {name: self._adapter_parameters(name) for name in ADAPTERS}
        with torch.no_grad():  # the teacher starts as the student (both equal the base: B = 0)
            for key, p in self._params[STUDENT].items():
                self._params[TEACHER][key].copy_(p)
        self.ema_decay = ema_decay
        self._ema: dict[str, torch.Tensor] | None = None
        if ema_decay is not None:
            self._ema = self._student_copy()
        self.student = AdapterDenoiser(self, STUDENT, frozen=False)
        self.teacher = AdapterDenoiser(self, TEACHER, frozen=True)
        self._reference = AdapterDenoiser(self, None, frozen=True)

    @classmethod
    def from_config(
        cls, config: RunConfig, model: PreTrainedModel, mask_token_id: int, pad_token_id: int
    ) -> LoRAPair:
        """The pair a run config asks for (``lora:``, the teacher update, checkpointing)."""
        if config.lora is None:
            raise ValueError("the run config has no lora section")
        ema = config.dtm.ema_decay if config.dtm.teacher_update == "ema" else None
        return cls(
            model,
            mask_token_id,
            pad_token_id,
            config.lora,
            ema_decay=ema,
            gradient_checkpointing=config.model.gradient_checkpointing,
            ema_student=config.dtm.ema_student,
        )

    # -- adapter switching -------------------------------------------------------------------

    def _fix_trainability(self) -> None:
        # PEFT's set_adapter (and re-enabling after disable_adapter) flips requires_grad to
        # "only the active adapter"; restore the fixed roles: student trains, teacher never.
        self.peft_model.set_requires_grad(STUDENT, True)
        self.peft_model.set_requires_grad(TEACHER, False)

    def _select(self, adapter: str | None) -> None:
        """Make ``adapter`` the one every forward uses (no-op if it already is)."""
        if adapter is None:
            raise ValueError("the bare base is reached through _using(None)")
        if self._active != adapter:
            self.peft_model.set_adapter(adapter)
            self._fix_trainability()
            self._active = adapter

    @contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        """Forwards inside use ``adapter`` (``None``: adapters disabled), then the student's."""
        try:
            if adapter is None:
                with self.peft_model.disable_adapter():
                    yield
            else:
                self._select(adapter)
                yield
        finally:
            self._select(STUDENT)
            self._fix_trainability()

    # -- weights -----------------------------------------------------------------------------

    def _named_adapter_parameters(self, adapter: str) -> Iterator[tuple[str, nn.Parameter]]:
        """An adapter's LoRA parameters under the PEFT model's own names."""
        for name, p in self.peft_model.named_parameters():
            if adapter in name.split(".") and "lora_" in name:
                yield name, p

    def _adapter_parameters(self, adapter: str) -> dict[str, nn.Parameter]:
        """An adapter's parameters keyed by name with the adapter segment removed.

        The keys are the same for both adapters, so student, teacher and EMA
        weights are interchangeable groups in a checkpoint.
        """
        out: dict[str, nn.Parameter] = {}
        for name, p in self._named_adapter_parameters(adapter):
            out[".".join(s for s in name.split(".") if s != adapter)] = p
        if not out:
            raise RuntimeError(f"adapter {adapter!r} has no parameters: check target_modules")
        return out

    def apply_sharding(self, shard: Callable[[nn.Module], None]) -> None:
        """Shard the one PEFT model (base and both adapters) and rebind the adapter parameters.

        Sharding replaces every parameter with a sharded one, so the adapter
        dictionaries (and the EMA, a copy of the student's) are rebuilt from it.
        """
        shard(self.peft_model)
        self._params = {name: self._adapter_parameters(name) for name in ADAPTERS}
        if self._ema is not None:
            self._ema = self._student_copy()

    def student_weights(self) -> dict[str, torch.Tensor]:
        """The student adapter's entries of the PEFT model's ``state_dict``."""
        return {name: p.detach() for name, p in self._named_adapter_parameters(STUDENT)}

    def _student_copy(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().float().clone() for k, p in self._params[STUDENT].items()}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student adapter's parameters only (never the teacher's, never the base's)."""
        return iter(self._params[STUDENT].values())

    def reference(self) -> MaskedDenoiser:
        """The frozen base: the same model with its adapters disabled."""
        return self._reference

    @torch.no_grad()
    def after_update(self) -> None:
        """EMA of the student adapter, tracked update by update within a stage."""
        if self._ema is None or self.ema_decay is None:
            return
        for key, p in self._params[STUDENT].items():
            self._ema[key].mul_(self.ema_decay).add_(p.detach().float(), alpha=1 - self.ema_decay)

    @torch.no_grad()
    def refresh_teacher(self) -> None:
        """Teacher adapter <- student adapter (or its EMA); the EMA restarts from the student."""
        source = self._ema if self._ema is not None else self._params[STUDENT]
        for key, p in self._params[TEACHER].items():
            p.copy_(source[key])
        if self._ema is not None and self.ema_student:
            # The published Countdown recipe (METHOD.md section 6): the student takes the EMA too.
            for key, p in self._params[STUDENT].items():
                p.copy_(self._ema[key])
        if self._ema is not None:
            self._ema = self._student_copy()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Adapter weights only: ``student``, ``teacher`` and ``ema`` when kept; never the base."""
        groups = {name: {k: p.detach() for k, p in self._params[name].items()} for name in ADAPTERS}
        if self._ema is not None:
            groups["ema"] = dict(self._ema)
        return groups

    @torch.no_grad()
    def load_state_dict(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore what :meth:`state_dict` wrote (keys must match exactly)."""
        for name in ADAPTERS:
            _copy_into(self._params[name], groups[name], name)
        if self._ema is not None:
            if "ema" not in groups:
                raise KeyError("the checkpoint has no EMA weights but this pair keeps an EMA")
            _check_keys(self._ema.keys(), groups["ema"].keys(), "ema")
            self._ema = {k: groups["ema"][k].detach().float().clone() for k in self._ema}

    def save_adapter(
        self,
        folder: str | Path,
        adapter: str = STUDENT,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save one adapter in PEFT's format (loadable onto the base with ``PeftModel``).

        ``state_dict``: the adapter's whole tensors when the model holds shards
        (from :meth:`student_weights`, gathered).
        """
        folder = Path(folder)
        self.peft_model.save_pretrained(
            str(folder), selected_adapters=[adapter], state_dict=state_dict
        )
        return folder


def _check_keys(have, got, group: str) -> None:
    missing, extra = sorted(set(have) - set(got)), sorted(set(got) - set(have))
    if missing or extra:
        raise KeyError(f"group {group!r}: missing keys {missing[:4]}, unexpected {extra[:4]}")


def _copy_into(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor], group: str):
    _check_keys(params.keys(), values.keys(), group)
    for key, p in params.items():
        p.copy_(values[key])
