"""Learned projections between student and teacher hidden widths (TinyBERT-style).

When the student is narrower than the teacher (e.g. 312 vs 768) the hidden-state loss needs
both sides at one width.  TinyBERT (Jiao et al. 2020, eq. 6) learns a matrix ``W_h`` that maps
the student hidden state up to the teacher width, trained jointly with the student and thrown
away afterwards.  This module provides that projection, one per mapped student layer, in
either direction, as a linear map or as a 1-D convolution over the sequence axis (which lets
the target at a word depend on its neighbours as well).
"""

from __future__ import annotations

from torch import Tensor, nn

from distill_lab.errors import SpecError
from distill_lab.distill.mapping import LayerMapping, is_int

PROJECTION_KINDS: tuple[str, ...] = ("conv1d", "linear")
DIRECTIONS: tuple[str, ...] = ("student_to_teacher", "teacher_to_student")


def _check_kind(kind: str) -> None:
    if kind not in PROJECTION_KINDS:
        raise SpecError(f"projection kind {kind!r} is not valid; valid kinds: {', '.join(PROJECTION_KINDS)}")


def _check_kernel_size(kernel_size: int) -> None:
    # Only odd kernels keep the sequence length with symmetric padding k // 2; an even
    # kernel would add one position and shift every word against its teacher target.
    if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise SpecError(f"projection kernel_size must be a positive odd int (1, 3, 5, ...), got {kernel_size!r}")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise SpecError(
            f"projection direction {direction!r} is not valid; valid directions: {', '.join(DIRECTIONS)}"
        )


class Projection(nn.Module):
    """Map ``(batch, length, in_dim)`` to ``(batch, length, out_dim)``.

    Args:
        in_dim, out_dim: widths, positive ints.
        kind: ``"linear"`` -- a position-wise ``nn.Linear``; ``"conv1d"`` -- ``nn.Conv1d``
            over the sequence axis with ``padding = kernel_size // 2`` (length preserved).
            Note that a conv1d window at the edge of the real tokens also sees padding
            positions; the loss masks the output, not the window.
        kernel_size: odd, >= 1; only used by ``"conv1d"`` (ignored for ``"linear"`` so a
            sweep can vary ``kind`` with one fixed kernel setting).

    Raises:
        SpecError: unknown ``kind``, even or non-positive ``kernel_size``, bad widths.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", kernel_size: int = 1) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if not is_int(value) or value < 1:
                raise SpecError(f"projection {name} must be a positive int, got {value!r}")
        _check_kind(kind)
        _check_kernel_size(kernel_size)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.kind = kind
        self.kernel_size = kernel_size if kind == "conv1d" else 1
        if kind == "linear":
            self.proj: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.proj = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(batch, length, in_dim)`` -> ``(batch, length, out_dim)``."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"Projection expects (batch, length, {self.in_dim}), got {tuple(x.shape)}"
            )
        if self.kind == "linear":
            return self.proj(x)
        # Conv1d wants channels first: (batch, in_dim, length).
        return self.proj(x.transpose(1, 2)).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, kernel_size={self.kernel_size}"


def build_projections(
    mapping: LayerMapping,
    student_width: int,
    teacher_width: int,
    kind: str = "linear",
    direction: str = "student_to_teacher",
    kernel_size: int = 1,
) -> nn.ModuleDict | None:
    """One :class:`Projection` per mapped student layer, keyed ``str(student_layer)``.

    ``direction="student_to_teacher"`` maps student width -> teacher width (TinyBERT);
    ``"teacher_to_student"`` maps the teacher down instead (cheaper for a very wide
    teacher, but the loss can then be lowered by shrinking both sides, so watch it).

    Returns ``None`` when the widths are equal: no projection (identity), no extra
    parameters.  ``kind``, ``direction`` and ``kernel_size`` are validated even then, so a
    bad spec fails the same way whatever the model widths are.

    Raises:
        SpecError: invalid ``kind``, ``direction``, ``kernel_size`` or widths.
    """
    _check_kind(kind)
    _check_direction(direction)
    _check_kernel_size(kernel_size)
    for name, value in (("student_width", student_width), ("teacher_width", teacher_width)):
        if not is_int(value) or value < 1:
            raise SpecError(f"projection {name} must be a positive int, got {value!r}")
    if student_width == teacher_width:
        return None
    in_dim, out_dim = (
        (student_width, teacher_width) if direction == "student_to_teacher" else (teacher_width, student_width)
    )
    return nn.ModuleDict(
        {str(student): Projection(in_dim, out_dim, kind=kind, kernel_size=kernel_size) for _, student in mapping}
    )


def project_pair(
    projections: nn.ModuleDict | None,
    direction: str,
    student_layer: int,
    student_hidden: Tensor,
    teacher_hidden: Tensor,
) -> tuple[Tensor, Tensor]:
    """Bring ``(student_hidden, teacher_hidden)`` to one width for the hidden loss.

    Args:
        projections: from :func:`build_projections`; ``None`` means identity.
        direction: which side the projection is applied to.
        student_layer: the mapped student layer (selects the projection).
        student_hidden: ``(batch, length, student_width)``.
        teacher_hidden: ``(batch, length, teacher_width)``; may be fp16 (cached), it is cast
            to the student dtype first so the projection and loss run in one dtype.

    Returns:
        ``(student, teacher)`` of equal shape ``(batch, length, width)``.

    Raises:
        SpecError: unknown ``direction``.
        ValueError: no projection for ``student_layer``, or widths differ with ``None``.
    """
    _check_direction(direction)
    teacher_hidden = teacher_hidden.to(dtype=student_hidden.dtype)
    if projections is None:
        if student_hidden.shape != teacher_hidden.shape:
            raise ValueError(
                f"project_pair: no projections but shapes differ: student {tuple(student_hidden.shape)}, "
                f"teacher {tuple(teacher_hidden.shape)}"
            )
        return student_hidden, teacher_hidden
    key = str(student_layer)
    if key not in projections:
        raise ValueError(
            f"project_pair: no projection for student layer {student_layer}; have {sorted(projections.keys(), key=int)}"
        )
    proj = projections[key]
    if direction == "student_to_teacher":
        student_hidden = proj(student_hidden)
    else:
        teacher_hidden = proj(teacher_hidden)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"project_pair: shapes differ after projection: student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)}"
        )
    return student_hidden, teacher_hidden


__all__ = ["DIRECTIONS", "PROJECTION_KINDS", "Projection", "build_projections", "project_pair"]
