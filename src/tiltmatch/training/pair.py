"""Student, teacher and reference denoisers, and how the teacher follows the student.

METHOD.md section 6: at each phase boundary the teacher (the frozen stage
reference ``mu_ref``, also the rollout policy) becomes the student, or an EMA
of it. :class:`CopiedPair` holds full copies (tiny models on CPU); the PEFT
pair in ``tiltmatch.training.lora`` holds two adapters on one frozen base instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from tiltmatch.models.denoiser import MaskedDenoiser


class DenoiserPair:
    """Interface: a trained student, a frozen teacher, optionally a frozen reference."""

    student: MaskedDenoiser
    teacher: MaskedDenoiser

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates."""
        return (p for p in self.student.parameters() if p.requires_grad)

    def reference(self) -> MaskedDenoiser:
        """The frozen base model (for KL terms of the baselines)."""
        raise NotImplementedError

    def after_update(self) -> None:
        """Hook after each optimiser update (EMA tracking)."""

    def refresh_teacher(self) -> None:
        """Make the teacher the student (or its EMA), at a phase boundary."""
        raise NotImplementedError

    def apply_sharding(self, shard: Callable[[nn.Module], None]) -> None:
        """Shard (in place) every distinct module holding weights, and rebind references."""
        raise NotImplementedError

    def student_weights(self) -> dict[str, torch.Tensor]:
        """The tensors a final save writes for the student (keys as its saver expects)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Named weight groups to checkpoint."""
        raise NotImplementedError

    def load_state_dict(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore what :meth:`state_dict` wrote."""
        raise NotImplementedError


def _frozen_copy(model: MaskedDenoiser) -> MaskedDenoiser:
    out = copy.deepcopy(model)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class CopiedPair(DenoiserPair):
    """Student and teacher as separate full models; EMA as a third copy when asked."""

    def __init__(
        self,
        student: MaskedDenoiser,
        ema_decay: float | None = None,
        keep_reference: bool = False,
        ema_student: bool = False,
    ) -> None:
        if ema_student and ema_decay is None:
            raise ValueError("ema_student needs an EMA (ema_decay)")
        self.student = student
        self.teacher = _frozen_copy(student)
        self.ema_decay = ema_decay
        self.ema_student = ema_student
        self.ema = _frozen_copy(student) if ema_decay is not None else None
        self._reference = _frozen_copy(student) if keep_reference else None

    def reference(self) -> MaskedDenoiser:
        """The frozen base model."""
        if self._reference is None:
            raise RuntimeError("this pair was built without a reference model")
        return self._reference

    @torch.no_grad()
    def after_update(self) -> None:
        """EMA of the student's weights, tracked update by update within a stage."""
        if self.ema is None or self.ema_decay is None:
            return
        for e, s in zip(self.ema.parameters(), self.student.parameters(), strict=True):
            e.mul_(self.ema_decay).add_(s.detach(), alpha=1.0 - self.ema_decay)

    @torch.no_grad()
    def refresh_teacher(self) -> None:
        """Teacher <- student (or its EMA); the EMA restarts from the student.

        With ``ema_student`` (the published Countdown recipe, METHOD.md section 6) the
        student takes the EMA weights as well, so the next stage starts from them.
        """
        source = self.ema if self.ema is not None else self.student
        self.teacher.load_state_dict(source.state_dict())
        if self.ema is not None and self.ema_student:
            self.student.load_state_dict(self.ema.state_dict())
        if self.ema is not None:
            self.ema.load_state_dict(self.student.state_dict())

    def apply_sharding(self, shard: Callable[[nn.Module], None]) -> None:
        """Shard the student's, teacher's, EMA's and reference's models, each on its own."""
        for denoiser in (self.student, self.teacher, self.ema, self._reference):
            if denoiser is not None:
                shard(denoiser.model)

    def student_weights(self) -> dict[str, torch.Tensor]:
        """The student model's ``state_dict`` (what ``save_pretrained`` writes)."""
        return self.student.model.state_dict()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Student, teacher, and EMA/reference where held."""
        groups = {"student": self.student.state_dict(), "teacher": self.teacher.state_dict()}
        if self.ema is not None:
            groups["ema"] = self.ema.state_dict()
        if self._reference is not None:
            groups["reference"] = self._reference.state_dict()
        return groups

    def load_state_dict(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore every group that this pair holds."""
        self.student.load_state_dict(groups["student"])
        self.teacher.load_state_dict(groups["teacher"])
        if self.ema is not None:
            self.ema.load_state_dict(groups["ema"])
        if self._reference is not None:
            self._reference.load_state_dict(groups["reference"])
