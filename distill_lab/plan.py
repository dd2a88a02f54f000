"""What a run will do, decided once from the models' configs before any weight is loaded.

`plan_run` is pure: given the run config, the teacher's and (if it has its own) the student's
model config, the init source's layer count and whether the two tokenizers agree, it checks every
shape the spec implies and returns the layer counts, the init layers, the layer mapping and the
sub-token needs. `load_plan` reads those configs (seconds, no weights) and calls it; `validate`,
`study run` and `run_distillation` all use that one plan, so a bad spec fails before the (slow)
teacher fine-tune and nothing is checked twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distill_lab import models
from distill_lab.distill.mapping import LayerMapping, build_mapping, describe, teacher_layers_needed, transformer_pairs
from distill_lab.errors import ModelError, SpecError
from distill_lab.spec import DistillSpec, RunConfig

# Models whose position ids start after the padding index: two positions fewer are usable.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer")


@dataclass(frozen=True)
class RunPlan:
    n_teacher: int
    n_student: int
    init_layers: tuple[int, ...]  # source layer copied into each student layer (empty: random init)
    mapping: LayerMapping  # teacher group -> student layer pairs for the hidden / attention losses
    attention_mapping: tuple[tuple[int, int], ...]  # (teacher layer, student layer) of the attention loss
    hidden_layers: tuple[int, ...]  # teacher layers whose hidden states the hidden loss reads
    same_tokenizer: bool
    token_logits: bool  # the soft loss reads every sub-token's logits
    needs_teacher: bool  # some loss reads the teacher's outputs (soft, hidden or attention)
    notes: tuple[str, ...] = ()  # settings that are valid but have no effect in this run


def plan_run(config: RunConfig, teacher_config: Any, *, student_config: Any | None = None,
             init_source_layers: int | None = None, same_tokenizer: bool = True) -> RunPlan:
    """The plan of `config` for these model configs; SpecError / ModelError name the field at fault.

    `student_config`: the student's own model config (None: built from the teacher's).
    `init_source_layers`: layer count of a `checkpoint` init source.
    """
    n_teacher = models.num_layers(teacher_config)
    check_max_length(config.data.max_length, teacher_config, "teacher")
    if student_config is None:
        n_student = _check_student_shape(config, teacher_config, n_teacher)
        n_pretrained = n_teacher
    else:
        check_max_length(config.data.max_length, student_config, "student")
        _check_copyable(config, student_config, teacher_config)
        n_pretrained = models.num_layers(student_config)
        n_student = _check_own_depth(config, n_pretrained)
    strategy, choice = config.student.init.strategy, config.student.init.layers
    sources = {"teacher": n_teacher, "pretrained": n_pretrained, "finetuned": n_pretrained,
               "checkpoint": init_source_layers}
    init_layers = tuple(models.select_layers(choice, sources[strategy], n_student)) if strategy in sources else ()
    distill = config.distill
    spec = distill.layer_mapping
    uses_mapping = distill.alpha_hidden > 0 or distill.alpha_attention > 0
    mapping: LayerMapping = ()
    notes: list[str] = []
    if uses_mapping or spec.pairs or spec.groups:  # layers named explicitly are checked even when unused
        mapping = build_mapping(spec.strategy, n_teacher, n_student,
                                pairs=[list(p) for p in spec.pairs] if spec.pairs else None, groups=spec.groups,
                                include_embeddings=spec.include_embeddings and distill.alpha_hidden > 0)
    if not uses_mapping and (spec.pairs or spec.groups):
        mapping = ()
        notes.append(f"distill.layer_mapping ({spec.strategy}) is unused: alpha_hidden and alpha_attention are 0")
    token_level = token_level_losses(distill)
    if token_level and not same_tokenizer:
        raise SpecError(f"{token_level[0]} needs teacher and student to share a tokenizer")
    attention = (tuple((max(group), student_layer) for group, student_layer in transformer_pairs(mapping))
                 if distill.alpha_attention > 0 else ())
    return RunPlan(
        n_teacher=n_teacher, n_student=n_student, init_layers=init_layers, mapping=mapping,
        attention_mapping=attention,
        hidden_layers=teacher_layers_needed(mapping) if distill.alpha_hidden > 0 else (),
        same_tokenizer=same_tokenizer,
        token_logits=distill.alpha_soft > 0 and distill.soft_positions == "all_subtokens",
        needs_teacher=distill.alpha_soft > 0 or distill.alpha_hidden > 0 or distill.alpha_attention > 0,
        notes=tuple(notes))


def _check_student_shape(config: RunConfig, teacher_config: Any, n_teacher: int) -> int:
    """A student cut from the teacher: its depth and widths against what the init strategy copies."""
    shape, strategy = config.student.from_teacher, config.student.init.strategy
    assert shape is not None
    copies = strategy in ("teacher", "pretrained")
    if shape.num_layers > n_teacher and copies:
        raise SpecError(
            f"student.from_teacher.num_layers: {shape.num_layers} exceeds the teacher's {n_teacher} layers "
            f"(allowed 1..{n_teacher} with init strategy {strategy!r})")
    models.student_config_from_teacher(
        teacher_config, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size)
    for name in ("hidden_size", "intermediate_size") if copies else ():
        wanted, teacher_value = getattr(shape, name), getattr(teacher_config, name, None)
        if wanted is not None and teacher_value is not None and wanted != teacher_value:
            raise ModelError(
                f"student.from_teacher.{name}: {wanted} differs from the teacher's {teacher_value}, so "
                f"init strategy {strategy!r} cannot copy its weights (shapes differ); use init "
                "strategy 'random' or the teacher's width")
    return shape.num_layers


def _check_own_depth(config: RunConfig, n_model: int) -> int:
    """A student with its own model: its depth (student.num_layers, else the model's) against what the init copies."""
    wanted, strategy = config.student.num_layers, config.student.init.strategy
    if wanted is not None and wanted > n_model and strategy in ("pretrained", "finetuned"):
        raise SpecError(f"student.num_layers: {wanted} exceeds {config.student.model}'s {n_model} layers "
                        f"(allowed 1..{n_model} with init strategy {strategy!r})")
    return wanted or n_model


def _check_copyable(config: RunConfig, student_config: Any, teacher_config: Any) -> None:
    if config.student.init.strategy != "teacher":
        return
    for name in ("vocab_size", "hidden_size", "intermediate_size"):
        ours, theirs = getattr(student_config, name, None), getattr(teacher_config, name, None)
        if ours != theirs:
            raise ModelError(
                f"student.init.strategy 'teacher': the student's {name} {ours} differs from the "
                f"teacher's {theirs}, so the teacher's weights cannot be copied (shapes differ); "
                "use init strategy 'pretrained' or 'random'")


def check_max_length(max_length: int, model_config: Any, role: str) -> None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    usable = positions - 2 if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS else positions
    if max_length > usable:
        raise SpecError(f"data.max_length: {max_length} exceeds the {role}'s {usable} positions "
                        f"(max_position_embeddings {positions}); use at most {usable}")


def token_level_losses(distill: DistillSpec) -> list[str]:
    """The losses that compare sub-token positions, so need one tokenizer for both models."""
    needs = []
    if distill.alpha_attention > 0:
        needs.append("distill.alpha_attention: attention-map loss")
    if distill.alpha_soft > 0 and distill.soft_positions == "all_subtokens":
        needs.append("distill.soft_positions: all_subtokens (a soft loss at every sub-token)")
    return needs


def same_tokenizer(a: Any, b: Any) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and type(a) is type(b))


def load_plan(config: RunConfig) -> RunPlan:
    """`plan_run` on the configs `config` names (model configs and tokenizers only, no weights)."""
    spec = config.teacher
    teacher_ref = models.resolve_reference(spec.model, trust_remote_code=spec.trust_remote_code, field="teacher.model")
    teacher_config = models.load_config(teacher_ref)
    if spec.checkpoint:
        checkpoint_ref = models.ModelRef(spec.checkpoint, spec.checkpoint, "local", Path(spec.checkpoint).name,
                                         spec.trust_remote_code, "teacher.checkpoint")
        teacher_config = models.load_config(checkpoint_ref)
    student_config, shared = None, True
    if config.student.model is not None:
        student_ref = models.resolve_reference(config.student.model, field="student.model")
        student_config = models.load_config(student_ref)
        shared = same_tokenizer(models.load_tokenizer(teacher_ref, teacher_config.model_type),
                                models.load_tokenizer(student_ref))
    init_source_layers = None
    if config.student.init.strategy == "checkpoint":
        checkpoint = models.resolve_reference(config.student.init.checkpoint or "", field="student.init.checkpoint")
        init_source_layers = models.num_layers(models.load_config(checkpoint))
    return plan_run(config, teacher_config, student_config=student_config, init_source_layers=init_source_layers,
                    same_tokenizer=shared)


def check_grid(spec: Any) -> list[str]:
    """Plan every point of a grid study against the real model configs (no weights): a point no trial
    could run (a mapping to a layer the student lacks) stops `validate` and `study run` up front.

    Returns notes on points that are one run twice: layer mappings written differently that build
    the same pairs (`uniform` for 12 -> 4 is (0,0) (4,1) (8,2) (11,3)) spend a trial on a repeat.
    """
    from distill_lab import search_space

    if not search_space.is_grid(spec):
        return []
    seen: dict[str, dict[str, Any]] = {}
    notes = []
    for point, config in search_space.grid_configs(spec):
        try:
            plan = load_plan(config)
        except SpecError as err:
            raise SpecError(f"study.search_space: grid point {point}: {err}") from None
        run = config.model_dump(mode="json")
        run["distill"].pop("layer_mapping")
        key = repr((run, replace(plan, notes=())))
        if key in seen:
            notes.append(f"grid points {seen[key]} and {point} build the same run (layer mapping "
                         f"{describe(plan.mapping) or 'none'}): the second trial repeats the first")
        else:
            seen[key] = point
    return notes

