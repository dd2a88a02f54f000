"""Which teacher transformer layers supervise which student layers.

A :data:`LayerMapping` is a tuple of ``(teacher_group, student_layer)`` entries, sorted by
student layer, each student layer appearing at most once.  ``teacher_group`` is a sorted
tuple of one or more teacher layers; the hidden-state target of the student layer is the
mean of the group (one-to-one mapping is a group of one).  All indices are 0-based
*transformer layer* indices -- see :func:`hidden_index` for how they address HF outputs.

Every mapping coming out of :func:`build_mapping` has been checked against the real layer
counts by :func:`validate_mapping`; errors are :class:`~distill_lab.errors.SpecError` whose
message starts with ``distill.layer_mapping`` and names the bad value and the allowed range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distill_lab.errors import SpecError

LayerMapping = tuple[tuple[tuple[int, ...], int], ...]
"""``((teacher_layers_group, student_layer), ...)``, 0-based transformer layer indices."""

_KEY = "distill.layer_mapping"


# The embedding output as a "layer" (TinyBERT's layer 0): hidden_states[0] of both models.
EMBEDDINGS = -1


def hidden_index(layer: int) -> int:
    """Index into HF ``outputs.hidden_states`` for transformer layer ``layer`` (0-based).

    HF returns ``num_layers + 1`` hidden states: ``hidden_states[0]`` is the embedding
    output and ``hidden_states[i + 1]`` the output of transformer layer ``i``.  Attention
    maps have no embedding entry, so ``attentions[layer]`` needs no shift.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < EMBEDDINGS:
        raise ValueError(f"hidden_index: layer must be an int >= {EMBEDDINGS} (the embeddings), got {layer!r}")
    return layer + 1


def uniform_indices(n_source: int, n_target: int) -> list[int]:
    """Pick ``n_target`` strictly increasing layers out of ``n_source``, first and last kept.

    Rule: ``step = floor((n_source - 1) / (n_target - 1) + 1/2)`` (round half up), then

    * ``index[i] = min(i * step, n_source - n_target + i)`` for ``i < n_target - 1``,
    * ``index[n_target - 1] = n_source - 1`` (the last target always gets the last source).

    Why this rule: the two reference layouts need a *constant* stride with the tail pinned
    to the last layer -- 12->4 is ``[0, 4, 8, 11]`` (stride 4 = round(11/3)) and 24->12 is
    ``[0, 2, ..., 20, 23]`` (stride 2 = round(23/11)).  Neither ``round(i*(n-1)/(m-1))``
    (gives 13 at i=6 for 24->12) nor ``n // m`` (gives stride 3 for 12->4) yields both.
    The ``min`` clamp only bites when rounding the stride up would run past the end
    (e.g. 10->7): it keeps one free source layer per remaining target, so the result is
    always strictly increasing and within range.  ``n_target == 1`` gives ``[n_source - 1]``.
    """
    for name, value in (("n_source", n_source), ("n_target", n_target)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"uniform_indices: {name} must be a positive int, got {value!r}")
    if n_target > n_source:
        raise ValueError(f"uniform_indices: n_target={n_target} exceeds n_source={n_source}")
    if n_target == 1:
        return [n_source - 1]
    # floor(x + 1/2) in exact integer arithmetic: round half up, no float ties, no
    # banker's rounding surprises from Python's round().
    step = max(1, (2 * (n_source - 1) + (n_target - 1)) // (2 * (n_target - 1)))
    head = [min(i * step, n_source - n_target + i) for i in range(n_target - 1)]
    return head + [n_source - 1]


# --------------------------------------------------------------------------- validation


def _fail(message: str) -> SpecError:
    return SpecError(f"{_KEY}: {message}")


def is_int(value: Any) -> bool:
    # bool is an int subclass; True as a layer index is always a spec typo.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_counts(n_teacher: Any, n_student: Any) -> None:
    for name, value in (("n_teacher", n_teacher), ("n_student", n_student)):
        if not is_int(value) or value < 1:
            raise _fail(f"{name} must be a positive int, got {value!r}")


def _check_teacher(layer: Any, n_teacher: int) -> None:
    if not is_int(layer) or not 0 <= layer < n_teacher:
        raise _fail(
            f"teacher layer {layer!r} is out of range; allowed 0..{n_teacher - 1} "
            f"(teacher has {n_teacher} layers)"
        )


def _check_student(layer: Any, n_student: int) -> None:
    if not is_int(layer) or not 0 <= layer < n_student:
        raise _fail(
            f"student layer {layer!r} is out of range; allowed 0..{n_student - 1} "
            f"(student has {n_student} layers)"
        )


def validate_mapping(mapping: LayerMapping, n_teacher: int, n_student: int) -> None:
    """Raise :class:`SpecError` unless ``mapping`` is a well-formed mapping for these counts.

    Checks: non-empty; every entry is ``(non-empty group, student)``; all indices are ints
    in range; no teacher layer repeated within a group; each student layer appears once;
    entries sorted by student layer (the canonical form :func:`build_mapping` produces).
    """
    _check_counts(n_teacher, n_student)
    if not mapping:
        raise _fail("mapping is empty; at least one (teacher, student) pair is required")
    seen_students: set[int] = set()
    previous = -1
    for entry in mapping:
        # Lists are accepted too: a mapping read back from a JSON manifest has no tuples.
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], (tuple, list)):
            raise _fail(f"entry {entry!r} is not a (teacher_group, student_layer) pair")
        group, student = entry
        _check_student(student, n_student)
        if not group:
            raise _fail(f"student layer {student} has no teacher layer; allowed 0..{n_teacher - 1}")
        for teacher in group:
            _check_teacher(teacher, n_teacher)
        if len(set(group)) != len(group):
            raise _fail(f"duplicate teacher layer in group {list(group)} for student layer {student}")
        if student in seen_students:
            raise _fail(f"student layer {student} appears more than once")
        if student < previous:
            raise _fail(f"entries must be sorted by student layer; {student} follows {previous}")
        seen_students.add(student)
        previous = student


# --------------------------------------------------------------------------- strategies


def _needs_fewer_students(strategy: str, n_teacher: int, n_student: int) -> None:
    if n_student > n_teacher:
        raise _fail(
            f"strategy {strategy!r} needs n_student <= n_teacher; got n_student={n_student} "
            f"> n_teacher={n_teacher} (allowed 1..{n_teacher})"
        )


def _one_to_one(teachers: Sequence[int]) -> LayerMapping:
    return tuple(((t,), s) for s, t in enumerate(teachers))


def _uniform(n_teacher: int, n_student: int) -> LayerMapping:
    _needs_fewer_students("uniform", n_teacher, n_student)
    return _one_to_one(uniform_indices(n_teacher, n_student))


def _last(n_teacher: int, n_student: int) -> LayerMapping:
    _needs_fewer_students("last", n_teacher, n_student)
    return _one_to_one(range(n_teacher - n_student, n_teacher))


def _skip(n_teacher: int, n_student: int) -> LayerMapping:
    # The end of each block of k teacher layers: k-1, 2k-1, ..., n_student*k - 1.
    # With n_teacher % n_student != 0 the trailing teacher layers are left unused.
    _needs_fewer_students("skip", n_teacher, n_student)
    k = n_teacher // n_student
    return _one_to_one([(s + 1) * k - 1 for s in range(n_student)])


def _split_groups(n_teacher: int, n_student: int) -> list[list[int]]:
    # numpy.array_split layout: the first n_teacher % n_student groups get one extra layer.
    base, extra = divmod(n_teacher, n_student)
    groups, start = [], 0
    for s in range(n_student):
        size = base + (1 if s < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def _group_pairs(pairs: Sequence[tuple[int, int]]) -> LayerMapping:
    by_student: dict[int, list[int]] = {}
    for teacher, student in pairs:
        by_student.setdefault(student, []).append(teacher)
    return tuple((tuple(sorted(by_student[s])), s) for s in sorted(by_student))


def _many_to_one(n_teacher: int, n_student: int, groups: Any = None) -> LayerMapping:
    if groups is None:
        _needs_fewer_students("many_to_one", n_teacher, n_student)
        groups = _split_groups(n_teacher, n_student)
    elif not isinstance(groups, (list, tuple)):
        raise _fail(f"groups must be a list of lists of teacher layers, got {groups!r}")
    elif len(groups) != n_student:
        raise _fail(
            f"groups has {len(groups)} entries but the student has {n_student} layers; "
            f"one group per student layer (index = student layer 0..{n_student - 1}) is required"
        )
    pairs: list[tuple[int, int]] = []
    for student, group in enumerate(groups):
        if not isinstance(group, (list, tuple)):
            raise _fail(f"group for student layer {student} must be a list of teacher layers, got {group!r}")
        if len(group) == 0:
            raise _fail(f"student layer {student} has no teacher layer; allowed 0..{n_teacher - 1}")
        for teacher in group:
            _check_teacher(teacher, n_teacher)
            if (teacher, student) in pairs:
                raise _fail(f"duplicate pair [{teacher}, {student}] (teacher {teacher} repeated in group {student})")
            pairs.append((teacher, student))
    return _group_pairs(pairs)


def _explicit(n_teacher: int, n_student: int, pairs: Any = None) -> LayerMapping:
    if pairs is None:
        raise _fail("strategy 'explicit' needs pairs: a list of [teacher, student] layer pairs")
    if not isinstance(pairs, (list, tuple)) or len(pairs) == 0:
        raise _fail(f"pairs must be a non-empty list of [teacher, student] pairs, got {pairs!r}")
    checked: list[tuple[int, int]] = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _fail(f"pair {pair!r} is not a [teacher, student] pair")
        teacher, student = pair
        _check_teacher(teacher, n_teacher)
        _check_student(student, n_student)
        if (teacher, student) in checked:
            raise _fail(f"duplicate pair [{teacher}, {student}]")
        checked.append((teacher, student))
    return _group_pairs(checked)


MAPPING_STRATEGIES: dict[str, Callable[..., LayerMapping]] = {
    "uniform": _uniform,
    "last": _last,
    "skip": _skip,
    "many_to_one": _many_to_one,
    "explicit": _explicit,
}
"""Registry: strategy name -> builder ``(n_teacher, n_student, **extra) -> LayerMapping``."""


def build_mapping(
    strategy: str,
    n_teacher: int,
    n_student: int,
    *,
    pairs: Sequence[Sequence[int]] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    include_embeddings: bool = False,
) -> LayerMapping:
    """Build and validate a layer mapping.

    ``include_embeddings`` puts the pair (teacher embeddings -> student embeddings) first, as
    TinyBERT's layer-0 loss; its index is :data:`EMBEDDINGS` on both sides.

    Strategies (keys of :data:`MAPPING_STRATEGIES`):

    * ``"uniform"`` -- :func:`uniform_indices` (first->first, last->last, constant stride).
    * ``"last"`` -- the last ``n_student`` teacher layers, in order.
    * ``"skip"`` -- every k-th teacher layer, ``k = n_teacher // n_student``, taking the
      end of each block: ``k-1, 2k-1, ...``.
    * ``"many_to_one"`` -- without ``groups``: the teacher layers split into ``n_student``
      contiguous groups as equal as possible (earlier groups one larger when uneven);
      with ``groups``: ``groups[s]`` lists the teacher layers averaged for student layer
      ``s`` (exactly ``n_student`` non-empty groups).
    * ``"explicit"`` -- ``pairs`` of ``[teacher, student]``; several teacher layers may map
      to the same student layer (they are grouped); student layers may be left out.

    Raises:
        SpecError: unknown strategy, an argument the strategy does not use, or any
            invalid index/count (message names ``distill.layer_mapping``).
    """
    if strategy not in MAPPING_STRATEGIES:
        raise _fail(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(sorted(MAPPING_STRATEGIES))}"
        )
    _check_counts(n_teacher, n_student)
    # An argument silently ignored is a sweep that does not test what it claims to.
    if pairs is not None and strategy != "explicit":
        raise _fail(f"pairs is only used by strategy 'explicit', not {strategy!r}")
    if groups is not None and strategy != "many_to_one":
        raise _fail(f"groups is only used by strategy 'many_to_one', not {strategy!r}")
    if strategy == "explicit":
        mapping = _explicit(n_teacher, n_student, pairs)
    elif strategy == "many_to_one":
        mapping = _many_to_one(n_teacher, n_student, groups)
    else:
        mapping = MAPPING_STRATEGIES[strategy](n_teacher, n_student)
    validate_mapping(mapping, n_teacher, n_student)
    return (((EMBEDDINGS,), EMBEDDINGS), *mapping) if include_embeddings else mapping


def transformer_pairs(mapping: LayerMapping) -> LayerMapping:
    """The mapping without its embedding pair (attention maps exist for transformer layers only)."""
    return tuple(entry for entry in mapping if entry[1] != EMBEDDINGS)


# --------------------------------------------------------------------------- queries


def teacher_layers_needed(mapping: LayerMapping) -> tuple[int, ...]:
    """Sorted unique teacher layers the mapping reads (what the teacher cache must keep)."""
    return tuple(sorted({t for group, _ in mapping for t in group}))


def is_monotone(mapping: LayerMapping) -> bool:
    """True if teacher depth strictly increases with student depth.

    Ordered by student layer, each group's smallest teacher layer must exceed the previous
    group's largest one (so overlapping groups are not monotone).
    """
    ordered = sorted(mapping, key=lambda entry: entry[1])
    return all(max(prev[0]) < min(cur[0]) for prev, cur in zip(ordered, ordered[1:]))


def describe(mapping: LayerMapping) -> str:
    """Compact text, e.g. ``"0->0 4->1 8->2 11->3"``; a group reads ``"0+1->0"``."""
    def name(layer: int) -> str:
        return "emb" if layer == EMBEDDINGS else str(layer)

    return " ".join(f"{'+'.join(name(t) for t in group)}->{name(student)}" for group, student in mapping)


__all__ = [
    "EMBEDDINGS",
    "LayerMapping",
    "MAPPING_STRATEGIES",
    "build_mapping",
    "describe",
    "hidden_index",
    "is_monotone",
    "teacher_layers_needed",
    "transformer_pairs",
    "uniform_indices",
    "validate_mapping",
]
