"""Distillation losses: pure functions of tensors, no state.

Conventions shared by every function here:

* Class distributions live on the last axis (``dim=-1``).  Nothing is ever normalised
  over the sequence axis: each word position is its own classification problem.
* Padding and ignored positions are removed with an explicit boolean ``mask`` *before*
  any arithmetic (boolean indexing), so whatever garbage sits at masked positions
  (huge logits, ``inf``, ``nan``) can influence neither the value nor the gradient.
* Averages are over valid positions, never over ``batch * length``; so the loss of a
  batch does not depend on how much padding it happens to carry.
* When no position is valid the loss is an exact ``0.0`` that is still attached to the
  graph, so ``loss.backward()`` works without special-casing empty batches.

References:

* Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
  arXiv:1503.02531 -- temperature-softened KL and the ``T**2`` gradient-scale factor.
* Jiao et al. (2020), "TinyBERT: Distilling BERT for Natural Language Understanding",
  Findings of EMNLP 2020, arXiv:1909.10351 -- hidden-state and attention MSE losses.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill_lab.data.align import IGNORE_INDEX  # the label of ignored positions, set where batches are encoded


def _as_bool_mask(mask: Tensor, expected_shape: tuple[int, ...], name: str) -> Tensor:
    """Return ``mask`` as a bool tensor of ``expected_shape``.

    An int 0/1 attention mask is accepted and converted: indexing with an int tensor
    would silently *gather* rows 0 and 1 instead of selecting, a nasty bug to chase.
    """
    if tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name}: mask shape {tuple(mask.shape)} does not match expected {tuple(expected_shape)}"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_like_graph(t: Tensor) -> Tensor:
    """An exact 0.0 connected to ``t``'s graph, computed from an empty selection.

    ``t.sum() * 0`` would be ``nan`` if ``t`` holds ``nan``/``inf`` at masked positions;
    summing an empty tensor cannot be.
    """
    return t.reshape(-1)[:0].sum()


def _check_same_shape(a: Tensor, b: Tensor, name: str, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: {a_name} shape {tuple(a.shape)} differs from {b_name} shape {tuple(b.shape)}"
        )


def hard_loss(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of the student against gold labels.

    Args:
        logits: ``(batch, words, labels)`` student logits.
        labels: ``(batch, words)`` int64 gold label ids; ``-100`` marks ignored positions
            (sub-word continuations, padding).
        class_weights: optional ``(labels,)`` per-class weights.

    Returns:
        Scalar. Without weights: the mean cross-entropy over non-ignored positions.
        With weights: the weighted mean ``sum(w[y] * ce) / sum(w[y])``, identical to
        ``F.cross_entropy(weight=w, reduction="mean")``.  ``0.0`` (with grad) when no
        position is valid -- ``F.cross_entropy`` would return ``nan`` there.
    """
    if logits.dim() != 3:
        raise ValueError(f"hard_loss: logits must be (batch, words, labels), got {tuple(logits.shape)}")
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"hard_loss: labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape[:2])}"
        )
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero_like_graph(logits)
    sel_logits = logits[valid].float()  # (n_valid, labels); fp32 even under bf16 autocast
    sel_labels = labels[valid]  # (n_valid,)
    ce = F.cross_entropy(sel_logits, sel_labels, reduction="none")  # (n_valid,)
    if class_weights is None:
        return ce.mean()
    if class_weights.dim() != 1 or class_weights.shape[0] != logits.shape[-1]:
        raise ValueError(
            f"hard_loss: class_weights must be ({logits.shape[-1]},), got {tuple(class_weights.shape)}"
        )
    w = class_weights.to(device=ce.device, dtype=ce.dtype)[sel_labels]
    return (w * ce).sum() / w.sum()


def soft_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Temperature-softened KL divergence from teacher to student (Hinton et al. 2015).

    ``T**2 * mean_over_masked_positions( KL(softmax(teacher/T) || softmax(student/T)) )``
    with the KL summed over the label axis (``dim=-1``).  The ``T**2`` factor keeps the
    gradient magnitude of the soft term roughly independent of ``T`` (Hinton et al., §2),
    so changing the temperature in a sweep does not silently re-weight it against the
    hard loss.

    Args:
        student_logits: ``(batch, words, labels)``.
        teacher_logits: ``(batch, words, labels)``; may be fp16 (cached teacher outputs),
            it is cast to the student dtype before the softmax.
        mask: ``(batch, words)`` bool, True where the position is scored.
        temperature: ``T > 0``.

    Returns:
        Scalar; ``0.0`` (with grad) when the mask selects nothing.

    Raises:
        ValueError: ``temperature <= 0`` or mismatched shapes.
    """
    if not temperature > 0:  # written this way so that nan is rejected too
        raise ValueError(f"soft_loss: temperature must be > 0, got {temperature}")
    _check_same_shape(student_logits, teacher_logits, "soft_loss", "student_logits", "teacher_logits")
    if student_logits.dim() != 3:
        raise ValueError(
            f"soft_loss: logits must be (batch, words, labels), got {tuple(student_logits.shape)}"
        )
    mask = _as_bool_mask(mask, tuple(student_logits.shape[:2]), "soft_loss")
    if not bool(mask.any()):
        return _zero_like_graph(student_logits)
    s = student_logits[mask].float() / temperature  # (n_valid, labels); fp32 even under autocast
    t = teacher_logits[mask].to(dtype=s.dtype) / temperature
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    # KL(p_t || p_s) = sum_c p_t (log p_t - log p_s); log-space teacher avoids 0 * log 0.
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (n_valid,)
    return kl.mean() * (temperature**2)


def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked positions and all hidden dims (TinyBERT, Jiao et al. 2020).

    Args:
        student_hidden, teacher_hidden: ``(batch, length, hidden)``, same width (project first).
        mask: ``(batch, length)`` bool.

    Returns:
        Scalar ``mean((s - t)**2)`` over ``n_valid * hidden`` elements; 0.0 when mask is empty.
    """
    _check_same_shape(student_hidden, teacher_hidden, "hidden_loss", "student_hidden", "teacher_hidden")
    mask = _as_bool_mask(mask, tuple(student_hidden.shape[:2]), "hidden_loss")
    if not bool(mask.any()):
        return _zero_like_graph(student_hidden)
    s = student_hidden[mask].float()  # (n_valid, hidden)
    t = teacher_hidden[mask].to(dtype=s.dtype)
    return (s - t).pow(2).mean()


def hidden_cosine(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked positions of ``1 - cos(s, t)`` (cosine over the hidden axis).

    Scale-invariant alternative to :func:`hidden_mse` (used e.g. by DistilBERT's cosine
    embedding loss): it aligns directions, not magnitudes, which matters when teacher and
    student hidden states have different norms.

    Args:
        student_hidden, teacher_hidden: ``(batch, length, hidden)``.
        mask: ``(batch, length)`` bool.

    Returns:
        Scalar in ``[0, 2]``; 0.0 when mask is empty.
    """
    _check_same_shape(student_hidden, teacher_hidden, "hidden_loss", "student_hidden", "teacher_hidden")
    mask = _as_bool_mask(mask, tuple(student_hidden.shape[:2]), "hidden_loss")
    if not bool(mask.any()):
        return _zero_like_graph(student_hidden)
    s = student_hidden[mask].float()
    t = teacher_hidden[mask].to(dtype=s.dtype)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


HIDDEN_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "mse": hidden_mse,
    "cosine": hidden_cosine,
}
"""Registry of hidden-state losses; each takes ``(student_hidden, teacher_hidden, mask)``."""


def hidden_loss(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor, kind: str = "mse") -> Tensor:
    """Hidden-state distillation loss (TinyBERT, Jiao et al. 2020), dispatched on ``kind``.

    Args:
        student_hidden, teacher_hidden: ``(batch, length, hidden)`` each, same width.
        mask: ``(batch, length)`` bool.
        kind: a key of :data:`HIDDEN_LOSSES` -- ``"mse"`` or ``"cosine"``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the valid ones) or shape mismatch.
    """
    try:
        fn = HIDDEN_LOSSES[kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"hidden_loss: unknown kind {kind!r}; valid kinds: {', '.join(sorted(HIDDEN_LOSSES))}"
        ) from None
    return fn(student_hidden, teacher_hidden, mask)


def attention_loss(student_attention: Tensor, teacher_attention: Tensor, mask: Tensor) -> Tensor:
    """Attention-map MSE (TinyBERT, Jiao et al. 2020, eq. 7).

    Only entries whose query *and* key positions are both valid are compared: the
    rows/columns of padding hold either zeros (probabilities) or huge negative numbers
    (pre-softmax scores with the additive mask) and would otherwise dominate the MSE.

    Args:
        student_attention: ``(batch, heads_s, length, length)``.
        teacher_attention: ``(batch, heads_t, length, length)``.  If ``heads_s != heads_t``
            both are averaged over heads first (a head-to-head pairing is meaningless
            then), giving one map per example.
        mask: ``(batch, length)`` bool.

    Returns:
        Scalar mean of squared differences over ``heads * n_valid_pairs`` entries;
        0.0 when no pair is valid.
    """
    if student_attention.dim() != 4 or teacher_attention.dim() != 4:
        raise ValueError(
            "attention_loss: attention must be (batch, heads, length, length), got "
            f"{tuple(student_attention.shape)} and {tuple(teacher_attention.shape)}"
        )
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(dim=1, keepdim=True)
        teacher_attention = teacher_attention.mean(dim=1, keepdim=True)
    _check_same_shape(
        student_attention, teacher_attention, "attention_loss", "student_attention", "teacher_attention"
    )
    batch, heads, length, length_k = student_attention.shape
    if length != length_k:
        raise ValueError(f"attention_loss: attention maps must be square, got {length}x{length_k}")
    mask = _as_bool_mask(mask, (batch, length), "attention_loss")
    pair = mask[:, None, :, None] & mask[:, None, None, :]  # (batch, 1, query, key)
    pair = pair.expand(batch, heads, length, length)
    if not bool(pair.any()):
        return _zero_like_graph(student_attention)
    s = student_attention[pair]
    t = teacher_attention[pair].to(dtype=s.dtype)
    return (s - t).pow(2).mean()
