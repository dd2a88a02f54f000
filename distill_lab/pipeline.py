"""One distillation run from a RunConfig: data -> teacher -> student -> loop -> scores."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from distill_lab import models, precision
from distill_lab.data.align import EncodedSplit, encode_sentences
from distill_lab.data.corpus import NerCorpus
from distill_lab.data.loader import load_corpus, training_sentences
from distill_lab.distill.engine import Objective, OnEval, TrainRecipe, TrainResult, resolve_device, train
from distill_lab.distill.mapping import (LayerMapping, build_mapping, describe, teacher_layers_needed,
                                        transformer_pairs)
from distill_lab.distill.projection import build_projections
from distill_lab.distill.teacher_cache import live_teacher_targets, teacher_targets
from distill_lab.paths import home_dir
from distill_lab.errors import ModelError, SpecError
from distill_lab.evaluation import Scores, diagnose, entity_types, evaluate
from distill_lab.spec import RunConfig
from distill_lab.teacher import Teacher, prepare_teacher

StageCallback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class RunResult:
    config: RunConfig
    labels: tuple[str, ...]
    teacher: Teacher
    student: torch.nn.Module
    student_tokenizer: Any
    init: models.InitReport
    layer_mapping: LayerMapping
    train_result: TrainResult
    dev: Scores
    test: Scores
    train_sample_f1: float
    diagnosis: str
    advice: str
    student_params: int
    teacher_params: int
    wall_seconds: float
    dev_predictions: list[list[str]] = field(default_factory=list)
    dev_sentences: list[Any] = field(default_factory=list)
    precision: str = "fp32"  # what the run really used (training.precision 'auto' resolved)

    @property
    def retention(self) -> float:
        return self.dev.f1 / self.teacher.dev_f1 if self.teacher.dev_f1 > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The numbers a person wants after a run (also the `--json` output)."""
        history = self.train_result.history
        last = history[-1] if history else {}
        return {
            "name": self.config.name,
            "teacher": {"model": self.teacher.ref.reference, "layers": models.num_layers(self.teacher.model),
                        "dev_f1": self.teacher.dev_f1, "test_f1": self.teacher.test_f1,
                        "reused": self.teacher.reused, "params": self.teacher_params},
            "student": {"layers": models.num_layers(self.student), "init": self.init.strategy,
                        "init_layers": [source for _, source in self.init.layer_pairs],
                        "params": self.student_params,
                        "dev_f1": self.dev.f1, "dev_precision": self.dev.precision, "dev_recall": self.dev.recall,
                        "dev_f1_per_type": self.dev.per_type, "test_f1": self.test.f1,
                        "test_f1_per_type": self.test.per_type, "train_sample_f1": self.train_sample_f1},
            "distill": {"temperature": self.config.distill.temperature,
                        "alphas": [self.config.distill.alpha_hard, self.config.distill.alpha_soft,
                                   self.config.distill.alpha_hidden, self.config.distill.alpha_attention],
                        "layer_mapping": describe(self.layer_mapping) if self.layer_mapping else None},
            "losses": {key: value for key, value in last.items() if key.startswith("loss_")},
            "retention": self.retention,
            "compression": self.teacher_params / self.student_params,
            "diagnosis": self.diagnosis,
            "advice": self.advice,
            "steps": self.train_result.steps,
            "best_step": self.train_result.best_step,
            "stopped_early": self.train_result.stopped_early,
            "tokens_per_second": self.train_result.tokens_per_second,
            "precision": self.precision,
            "checkpoint": self.config.training.checkpoint,
            "wall_seconds": self.wall_seconds,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _label2id(labels: tuple[str, ...]) -> dict[str, int]:
    return {label: index for index, label in enumerate(labels)}


def build_student(config: RunConfig, teacher: Teacher, labels: tuple[str, ...]) -> tuple[torch.nn.Module, Any, models.InitReport]:
    """Construct the student (from the teacher's config or its own reference) and initialise it."""
    spec = config.student
    init = spec.init
    if spec.from_teacher is not None:
        shape = spec.from_teacher
        n_teacher = models.num_layers(teacher.model)
        if shape.num_layers > n_teacher and init.strategy in ("teacher", "pretrained"):
            raise SpecError(
                f"student.from_teacher.num_layers: {shape.num_layers} exceeds the teacher's {n_teacher} layers "
                f"(allowed 1..{n_teacher} with init strategy {init.strategy!r})"
            )
        student_config = models.student_config_from_teacher(
            teacher.model.config, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size)
        tokenizer = teacher.tokenizer
        pretrained_ref = teacher.ref
    else:
        assert spec.model is not None
        pretrained_ref = models.resolve_reference(spec.model, field="student.model")
        student_config = models.load_config(pretrained_ref)
        tokenizer = models.load_tokenizer(pretrained_ref, student_config.model_type)
    # Seeded before construction so the random parts (head, non-copied layers) repeat exactly.
    seed_everything(config.training.seed)
    student = models.token_classifier_from_config(student_config, labels)
    pretrained_source = None
    source_name = pretrained_ref.display_name
    if init.strategy == "pretrained":
        pretrained_source = models.load_backbone(pretrained_ref)
    elif init.strategy == "checkpoint":
        checkpoint_ref = models.resolve_reference(init.checkpoint or "", field="student.init.checkpoint")
        pretrained_source = models.load_backbone(checkpoint_ref)
        source_name = f"checkpoint {init.checkpoint}"
    elif init.strategy == "teacher":
        source_name = f"fine-tuned {teacher.ref.display_name}"
    report = models.initialise_student(
        student, init.strategy, init.layers, fine_tuned_teacher=teacher.model,
        pretrained_source=pretrained_source, source_name=source_name)
    return student, tokenizer, report


def check_models(config: RunConfig) -> None:
    """Checks that need the models' configs but no weights, run before the (slow) teacher fine-tune.

    Student shape vs teacher, init layers and the layer mapping can only be checked once the
    layer counts are known; failing here costs seconds instead of a whole teacher fine-tune.
    """
    spec = config.teacher
    teacher_ref = models.resolve_reference(spec.model, trust_remote_code=spec.trust_remote_code,
                                           field="teacher.model")
    teacher_config = models.load_config(teacher_ref)
    if spec.checkpoint:
        checkpoint_ref = models.ModelRef(spec.checkpoint, spec.checkpoint, "local", Path(spec.checkpoint).name,
                                         spec.trust_remote_code, "teacher.checkpoint")
        teacher_config = models.load_config(checkpoint_ref)
    n_teacher = models.num_layers(teacher_config)
    _check_max_length(config.data.max_length, teacher_config, "teacher")
    student, init = config.student, config.student.init
    copies = init.strategy in ("teacher", "pretrained")
    student_ref = None
    if student.from_teacher is not None:
        shape = student.from_teacher
        if shape.num_layers > n_teacher and copies:
            raise SpecError(
                f"student.from_teacher.num_layers: {shape.num_layers} exceeds the teacher's {n_teacher} layers "
                f"(allowed 1..{n_teacher} with init strategy {init.strategy!r})"
            )
        models.student_config_from_teacher(
            teacher_config, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size)
        if copies:
            for name in ("hidden_size", "intermediate_size"):
                wanted, teacher_value = getattr(shape, name), getattr(teacher_config, name, None)
                if wanted is not None and teacher_value is not None and wanted != teacher_value:
                    raise ModelError(
                        f"student.from_teacher.{name}: {wanted} differs from the teacher's {teacher_value}, so "
                        f"init strategy {init.strategy!r} cannot copy its weights (shapes differ); use init "
                        "strategy 'random' or the teacher's width"
                    )
        n_student = shape.num_layers
        n_pretrained = n_teacher
    else:
        assert student.model is not None
        student_ref = models.resolve_reference(student.model, field="student.model")
        student_config = models.load_config(student_ref)
        _check_max_length(config.data.max_length, student_config, "student")
        n_student = n_pretrained = models.num_layers(student_config)
        if init.strategy == "teacher":
            for name in ("vocab_size", "hidden_size", "intermediate_size"):
                ours, theirs = getattr(student_config, name, None), getattr(teacher_config, name, None)
                if ours != theirs:
                    raise ModelError(
                        f"student.init.strategy 'teacher': the student's {name} {ours} differs from the "
                        f"teacher's {theirs}, so the teacher's weights cannot be copied (shapes differ); "
                        "use init strategy 'pretrained' or 'random'"
                    )
    if init.strategy == "teacher":
        models.select_layers(init.layers, n_teacher, n_student)
    elif init.strategy == "pretrained":
        models.select_layers(init.layers, n_pretrained, n_student)
    elif init.strategy == "checkpoint":
        checkpoint = models.resolve_reference(init.checkpoint or "", field="student.init.checkpoint")
        models.select_layers(init.layers, models.num_layers(models.load_config(checkpoint)), n_student)
    distill = config.distill
    if distill.alpha_hidden > 0 or distill.alpha_attention > 0:
        mapping = distill.layer_mapping
        build_mapping(mapping.strategy, n_teacher, n_student,
                      pairs=[list(p) for p in mapping.pairs] if mapping.pairs else None, groups=mapping.groups,
                      include_embeddings=mapping.include_embeddings)
    token_level = _token_level_losses(distill)
    if token_level and student_ref is not None:
        teacher_tokenizer = models.load_tokenizer(teacher_ref, teacher_config.model_type)
        student_tokenizer = models.load_tokenizer(student_ref)
        if not _same_tokenizer(teacher_tokenizer, student_tokenizer):
            raise SpecError(f"{token_level[0]} needs teacher and student to share a tokenizer")


# Models whose position ids start after the padding index: two positions fewer are usable.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer")


def _check_max_length(max_length: int, model_config: Any, role: str) -> None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    usable = positions - 2 if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS else positions
    if max_length > usable:
        raise SpecError(f"data.max_length: {max_length} exceeds the {role}'s {usable} positions "
                        f"(max_position_embeddings {positions}); use at most {usable}")


def _token_level_losses(distill: Any) -> list[str]:
    """The losses that compare sub-token positions, so need one tokenizer for both models."""
    needs = []
    if distill.alpha_attention > 0:
        needs.append("distill.alpha_attention: attention-map loss")
    if distill.alpha_soft > 0 and distill.soft_positions == "all_subtokens":
        needs.append("distill.soft_positions: all_subtokens (a soft loss at every sub-token)")
    return needs


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and type(a) is type(b))


def run_distillation(config: RunConfig, *, on_eval: OnEval | None = None, stage: StageCallback | None = None,
                     corpus: NerCorpus | None = None) -> RunResult:
    """Fine-tune (or reuse) the teacher, build and distil the student, score it on dev and test."""
    started = time.perf_counter()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    device = resolve_device(config.training.device)
    run_precision = precision.resolve(config.training.precision, device)
    check_models(config)
    corpus = corpus or load_corpus(config.data)
    labels = corpus.labels

    def report(name: str) -> Callable[[int, int], None] | None:
        return None if stage is None else (lambda done, total: stage(name, done, total))

    class_weights = class_weight_tensor(config.distill.class_weights, corpus)  # bad types fail before training
    teacher = prepare_teacher(config, corpus, device=device, progress=report("teacher fine-tune"),
                              precision=run_precision)
    teacher.model.to(device).eval()
    student, tokenizer, init_report = build_student(config, teacher, labels)

    distill = config.distill
    n_teacher, n_student = models.num_layers(teacher.model), models.num_layers(student)
    mapping: LayerMapping = ()
    if distill.alpha_hidden > 0 or distill.alpha_attention > 0:
        spec = distill.layer_mapping
        mapping = build_mapping(spec.strategy, n_teacher, n_student,
                                pairs=[list(p) for p in spec.pairs] if spec.pairs else None, groups=spec.groups,
                                include_embeddings=spec.include_embeddings and distill.alpha_hidden > 0)
    same_tokenizer = _same_tokenizer(teacher.tokenizer, tokenizer)
    token_level = _token_level_losses(distill)
    if token_level and not same_tokenizer:
        raise SpecError(f"{token_level[0]} needs teacher and student to share a tokenizer")
    token_logits = distill.alpha_soft > 0 and distill.soft_positions == "all_subtokens"

    label2id = _label2id(labels)
    max_length = config.data.max_length
    # Gold sentences, then augmented copies (gold tags follow the swap), then unlabeled transfer
    # text whose labels are IGNORE_INDEX: the hard loss never sees it, soft/hidden losses do.
    train_sentences = training_sentences(corpus, config.data)
    train_split = encode_sentences(train_sentences, tokenizer, label2id, max_length)
    dev_split = encode_sentences(corpus.dev, tokenizer, label2id, max_length)
    test_split = encode_sentences(corpus.test, tokenizer, label2id, max_length)
    teacher_train: EncodedSplit = train_split if same_tokenizer else encode_sentences(
        train_sentences, teacher.tokenizer, label2id, max_length)

    needs_teacher = distill.alpha_soft > 0 or distill.alpha_hidden > 0 or distill.alpha_attention > 0
    targets = None
    attention_mapping: tuple[tuple[int, int], ...] = ()
    if needs_teacher:
        if distill.alpha_attention > 0:
            attention_mapping = tuple((max(group), student_layer) for group, student_layer in transformer_pairs(mapping))
            _use_eager_attention(teacher.model)
            _use_eager_attention(student)
        cache = config.training.teacher_cache
        hidden_layers = teacher_layers_needed(mapping) if distill.alpha_hidden > 0 else ()
        attention_layers = tuple(t for t, _ in attention_mapping)
        if cache == "off":
            targets = live_teacher_targets(teacher.model, teacher_train, layers=hidden_layers,
                                           word_level_hidden=not same_tokenizer, attention_layers=attention_layers,
                                           device=device, token_logits=token_logits)
        else:
            # Outputs of a bf16 forward differ from fp32 ones: cached under their own key.
            fingerprint = teacher.fingerprint + ("" if run_precision == "fp32" else f"-{run_precision}")
            with precision.autocast(device, run_precision):
                targets = teacher_targets(
                    teacher.model, teacher_train, teacher_fingerprint=fingerprint, layers=hidden_layers,
                    word_level_hidden=not same_tokenizer, attention_layers=attention_layers,
                    batch_size=config.training.eval_batch_size, device=device,
                    cache_dir=home_dir() / "teacher_outputs" if cache == "disk" else None,
                    max_bytes=int(config.training.teacher_cache_max_gb * 1e9), token_logits=token_logits)
    projections = None
    if distill.alpha_hidden > 0:
        projection = distill.projection
        projections = build_projections(mapping, models.hidden_width(student), models.hidden_width(teacher.model),
                                        projection.kind, projection.direction, projection.kernel_size)
    objective = Objective(
        alpha_hard=distill.alpha_hard, alpha_soft=distill.alpha_soft, alpha_hidden=distill.alpha_hidden,
        alpha_attention=distill.alpha_attention, temperature=distill.temperature,
        soft_positions=distill.soft_positions, hidden_kind=distill.hidden_loss,
        teacher=targets, layer_mapping=mapping if distill.alpha_hidden > 0 else (),
        attention_mapping=attention_mapping, projections=projections,
        projection_direction=distill.projection.direction,
        class_weights=class_weights)
    training = config.training
    recipe = TrainRecipe(
        epochs=training.epochs, learning_rate=training.learning_rate, batch_size=training.batch_size,
        weight_decay=training.weight_decay, warmup_ratio=training.warmup_ratio,
        max_grad_norm=training.max_grad_norm, seed=training.seed, eval_every=training.eval_every,
        eval_batch_size=training.eval_batch_size, max_steps=training.max_steps, lr_schedule=training.lr_schedule,
        fused_optimizer=training.fused_optimizer, precision=run_precision, checkpoint=training.checkpoint,
        batching=training.batching, loss_normalization=training.loss_normalization)
    result = train(student, train_split, dev_split, labels, recipe, objective, device=device, on_eval=on_eval,
                   progress=report("distill"))

    if result.kept_scores is not None and result.kept_predictions is not None:
        # The kept weights (best or last eval's): its scores and predictions are the dev result.
        dev_scores, dev_predictions = result.kept_scores, result.kept_predictions
    else:
        dev_scores, dev_predictions = evaluate(student, dev_split, labels, batch_size=recipe.eval_batch_size,
                                               device=device, precision=run_precision)
    test_scores, _ = evaluate(student, test_split, labels, batch_size=recipe.eval_batch_size, device=device,
                              precision=run_precision)
    gold_split = EncodedSplit(train_split.sentences[:len(corpus.train)], train_split.encoded[:len(corpus.train)],
                              train_split.pad_id)
    sample = _train_sample(gold_split, config.data.train_sample_size, training.seed)
    sample_scores, _ = evaluate(student, sample, labels, batch_size=recipe.eval_batch_size, device=device,
                                precision=run_precision)
    gold_types = entity_types([s.tags or () for s in corpus.dev])
    diagnosis, advice = diagnose(dev_scores, sample_scores.f1, gold_types, entity_types(dev_predictions),
                                 overfit_gap=config.diagnosis.overfit_gap, random_floor=config.diagnosis.random_floor)
    return RunResult(
        config=config, labels=labels, teacher=teacher, student=student, student_tokenizer=tokenizer,
        init=init_report, layer_mapping=mapping, train_result=result, dev=dev_scores, test=test_scores,
        train_sample_f1=sample_scores.f1, diagnosis=diagnosis, advice=advice,
        student_params=models.count_parameters(student), teacher_params=models.count_parameters(teacher.model),
        wall_seconds=time.perf_counter() - started, dev_predictions=dev_predictions,
        dev_sentences=list(corpus.dev), precision=run_precision)


def _train_sample(split: EncodedSplit, size: int, seed: int) -> EncodedSplit:
    """A fixed sample of the training set: its F1 against dev F1 is the overfitting signal."""
    indices = sorted(random.Random(seed).sample(range(len(split)), min(size, len(split))))
    return EncodedSplit([split.sentences[i] for i in indices], [split.encoded[i] for i in indices], split.pad_id)


def _use_eager_attention(model: torch.nn.Module) -> None:
    # SDPA kernels do not return attention probabilities.
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise ModelError("distill.alpha_attention: this transformers version cannot switch to eager attention")
    setter("eager")


def class_weight_tensor(setting: Any, corpus: NerCorpus) -> torch.Tensor | None:
    """Per-label weights for the hard loss: none | inverse_frequency | {TYPE: weight}."""
    labels = corpus.labels
    if setting == "none":
        return None
    if setting == "inverse_frequency":
        counts = torch.ones(len(labels))  # add-one so unseen labels stay finite
        index = _label2id(labels)
        for sentence in corpus.train:
            for tag in sentence.tags or ():
                counts[index[tag]] += 1
        weights = counts.sum() / (len(labels) * counts)
        return weights / weights[index["O"]] if "O" in index else weights
    types = corpus.entity_types()
    unknown = sorted(set(setting) - set(types) - {"O"})
    if unknown:
        raise SpecError(f"distill.class_weights: unknown entity type(s) {unknown}; the data has {list(types)} (and O)")
    weights = torch.ones(len(labels))
    for position, label in enumerate(labels):
        key = "O" if label == "O" else label[2:]
        weights[position] = float(setting.get(key, 1.0))
    return weights
