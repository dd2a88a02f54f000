"""One distillation run from a RunConfig: data -> teacher -> student -> loop -> scores."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from distill_lab import models, precision, speed
from distill_lab.data.align import EncodedSplit, encode_sentences, label_index
from distill_lab.data.corpus import NerCorpus
from distill_lab.data.loader import load_corpus, training_sentences
from distill_lab.distill.engine import Objective, OnEval, TrainRecipe, TrainResult, resolve_device, train
from distill_lab.distill import resume
from distill_lab.distill.mapping import LayerMapping, describe
from distill_lab.distill.projection import build_projections
from distill_lab.distill.teacher_cache import live_teacher_targets, teacher_targets
from distill_lab.paths import home_dir
from distill_lab.errors import ModelError, SpecError
from distill_lab.diagnosis import diagnose
from distill_lab.evaluation import Scores, entity_types, evaluate
from distill_lab.plan import RunPlan, load_plan
from distill_lab.spec import RunConfig
from distill_lab.teacher import Teacher, prepare_init_source, prepare_teacher

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
    inference_speed: speed.Speed | None = None  # inference sentences/s, student vs teacher (training.speed_sentences)
    resume_point: resume.ResumePoint | None = None  # left for the caller (run_distillation's keep_resume)

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
            "inference": ({**self.inference_speed.metrics(), "sentences": self.inference_speed.sentences}
                          if self.inference_speed else None),
            "checkpoint": self.config.training.checkpoint,
            "wall_seconds": self.wall_seconds,
        }


def build_student(config: RunConfig, teacher: Teacher, labels: tuple[str, ...], *,
                  init_source: Teacher | None = None) -> tuple[torch.nn.Module, Any, models.InitReport]:
    """Construct the student (from the teacher's config or its own reference) and initialise it.

    `init_source`: for init strategy `finetuned`, the student's own model fine-tuned on the task
    (`prepare_init_source`).
    """
    spec = config.student
    init = spec.init
    if spec.from_teacher is not None:
        shape = spec.from_teacher  # checked against the teacher by the run's plan
        student_config = models.student_config_from_teacher(
            teacher.model.config, num_layers=shape.num_layers, hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size)
        tokenizer = teacher.tokenizer
        pretrained_ref = teacher.ref
    else:
        assert spec.model is not None
        pretrained_ref = models.resolve_reference(spec.model, field="student.model")
        student_config = models.load_config(pretrained_ref)
        if spec.num_layers is not None:  # checked against the model by the run's plan
            student_config = models.student_config_from_teacher(student_config, num_layers=spec.num_layers)
        tokenizer = models.load_tokenizer(pretrained_ref, student_config.model_type)
    # Seeded before construction so the random parts (head, non-copied layers) repeat exactly.
    transformers.set_seed(config.training.seed)
    student = models.token_classifier_from_config(student_config, labels)
    pretrained_source = None
    source_name = pretrained_ref.display_name
    if init.strategy == "pretrained":
        pretrained_source = models.load_backbone(pretrained_ref)
    elif init.strategy == "checkpoint":
        checkpoint_ref = models.resolve_reference(init.checkpoint or "", field="student.init.checkpoint")
        pretrained_source = models.load_backbone(checkpoint_ref)
        source_name = f"checkpoint {init.checkpoint}"
    elif init.strategy == "finetuned":
        if init_source is None:
            raise ModelError("student.init.strategy 'finetuned': the fine-tuned student model was not prepared")
        pretrained_source = init_source.model
        source_name = f"fine-tuned {init_source.ref.display_name} (dev F1 {100 * init_source.dev_f1:.2f})"
    elif init.strategy == "teacher":
        source_name = f"fine-tuned {teacher.ref.display_name}"
    report = models.initialise_student(
        student, init.strategy, init.layers, fine_tuned_teacher=teacher.model,
        pretrained_source=pretrained_source, source_name=source_name)
    return student, tokenizer, report


def run_distillation(config: RunConfig, *, on_eval: OnEval | None = None, stage: StageCallback | None = None,
                     corpus: NerCorpus | None = None, plan: RunPlan | None = None,
                     keep_resume: bool = False) -> RunResult:
    """Fine-tune (or reuse) the teacher, build and distil the student, score it on dev and test.

    `plan`: the run's plan when the caller made it already (a study makes it once per trial);
    otherwise it is made here, before the teacher fine-tune, so a bad spec fails in seconds.
    `corpus`: a corpus the caller shares across runs (a study worker's); its tokenised splits are then
    kept for the process's later runs on it, as the loaded teacher always is.
    `keep_resume`: leave the run's resume point (training.resume_every_minutes) for the caller to
    discard once it has recorded the result (a study: when the trial's every seed is done).
    """
    started = time.perf_counter()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    device = resolve_device(config.training.device)
    run_precision = precision.resolve(config.training.precision, device)
    plan = plan or load_plan(config)
    shared_corpus = corpus is not None
    corpus = corpus or load_corpus(config.data)
    labels = corpus.labels

    def report(name: str) -> Callable[[int, int], None] | None:
        return None if stage is None else (lambda done, total: stage(name, done, total))

    class_weights = class_weight_tensor(config.distill.class_weights, corpus)  # bad types fail before training
    teacher = prepare_teacher(config, corpus, device=device, progress=report("teacher fine-tune"),
                              precision=run_precision)
    teacher.model.to(device).eval()
    init_source = (prepare_init_source(config, corpus, device=device, precision=run_precision,
                                       progress=report("student init fine-tune"))
                   if config.student.init.strategy == "finetuned" else None)
    student, tokenizer, init_report = build_student(config, teacher, labels, init_source=init_source)
    splits = _encode(config, corpus, tokenizer, teacher.tokenizer, plan, shared_corpus=shared_corpus)
    objective = _objective(config, plan, teacher, student, splits["teacher_train"], device, run_precision,
                           class_weights)
    recipe = train_recipe(config, run_precision)
    with resume.held(resume.for_run(config, teacher.fingerprint)) as point:
        result = train(student, splits["train"], splits["dev"], labels, recipe, objective, device=device,
                       on_eval=on_eval, progress=report("distill"), resume=point)
    scores = _score(config, corpus, student, splits, result, device, run_precision, teacher.dev_f1,
                    # On transfer text the teacher never fitted, a student above it is KD working.
                    distils=plan.needs_teacher and config.data.transfer is None)
    run_speed = _speed(config, plan, corpus, student, teacher, splits["dev"], device, run_precision)
    return RunResult(
        config=config, labels=labels, teacher=teacher, student=student, student_tokenizer=tokenizer,
        init=init_report, layer_mapping=plan.mapping, train_result=result, **scores,
        student_params=models.count_parameters(student), teacher_params=models.count_parameters(teacher.model),
        wall_seconds=time.perf_counter() - started, dev_sentences=list(corpus.dev), precision=run_precision,
        inference_speed=run_speed, resume_point=point if keep_resume else resume.discarded(point))


# Tokenised splits a process already made (a worker's trials and seeds share them): key -> (corpus, splits);
# holding the corpus keeps its id from being reused while the entry lives.
_ENCODED: dict[tuple[Any, ...], tuple[NerCorpus, dict[str, EncodedSplit]]] = {}


def _encode(config: RunConfig, corpus: NerCorpus, tokenizer: Any, teacher_tokenizer: Any,
            plan: RunPlan, *, shared_corpus: bool) -> dict[str, EncodedSplit]:
    """Train / dev / test splits for the student, and the training split as the teacher reads it.

    A corpus the caller shares across runs (a study worker's) is encoded once per tokenizers, length
    and training text: the seeds and trials of a study re-read the same splits (never modified).
    """
    if not shared_corpus:
        return _encode_splits(config, corpus, tokenizer, teacher_tokenizer, plan)
    key = (id(corpus), _tokenizer_key(tokenizer), _tokenizer_key(teacher_tokenizer), plan.same_tokenizer,
           config.data.max_length, json.dumps(config.data.model_dump(mode="json", include={"augment", "transfer"}),
                                              sort_keys=True))
    if key in _ENCODED:
        return _ENCODED[key][1]
    splits = _encode_splits(config, corpus, tokenizer, teacher_tokenizer, plan)
    _ENCODED[key] = (corpus, splits)
    while len(_ENCODED) > 2:
        _ENCODED.pop(next(iter(_ENCODED)))
    return splits


def _tokenizer_key(tokenizer: Any) -> tuple[str, int]:
    return str(getattr(tokenizer, "name_or_path", "")), len(tokenizer)


def _encode_splits(config: RunConfig, corpus: NerCorpus, tokenizer: Any, teacher_tokenizer: Any,
                   plan: RunPlan) -> dict[str, EncodedSplit]:
    label2id = label_index(corpus.labels)
    max_length = config.data.max_length
    # Gold sentences, then augmented copies (gold tags follow the swap), then unlabeled transfer
    # text whose labels are IGNORE_INDEX: the hard loss never sees it, soft/hidden losses do.
    train_sentences = training_sentences(corpus, config.data)
    train_split = encode_sentences(train_sentences, tokenizer, label2id, max_length)
    return {
        "train": train_split,
        "dev": encode_sentences(corpus.dev, tokenizer, label2id, max_length),
        "test": encode_sentences(corpus.test, tokenizer, label2id, max_length),
        "teacher_train": train_split if plan.same_tokenizer else encode_sentences(
            train_sentences, teacher_tokenizer, label2id, max_length),
    }


def _objective(config: RunConfig, plan: RunPlan, teacher: Teacher, student: torch.nn.Module,
               teacher_train: EncodedSplit, device: torch.device, run_precision: str,
               class_weights: torch.Tensor | None) -> Objective:
    distill = config.distill
    targets = None
    if plan.needs_teacher:
        if plan.attention_mapping:
            _use_eager_attention(teacher.model)
            _use_eager_attention(student)
        targets = _teacher_targets(config, plan, teacher, teacher_train, device, run_precision)
    projections = None
    if distill.alpha_hidden > 0:
        projection = distill.projection
        projections = build_projections(plan.mapping, models.hidden_width(student),
                                        models.hidden_width(teacher.model), projection.kind, projection.direction,
                                        projection.kernel_size)
    return Objective(
        alpha_hard=distill.alpha_hard, alpha_soft=distill.alpha_soft, alpha_hidden=distill.alpha_hidden,
        alpha_attention=distill.alpha_attention, temperature=distill.temperature,
        soft_positions=distill.soft_positions, hidden_kind=distill.hidden_loss,
        teacher=targets, layer_mapping=plan.mapping if distill.alpha_hidden > 0 else (),
        attention_mapping=plan.attention_mapping, projections=projections,
        projection_direction=distill.projection.direction,
        class_weights=class_weights)


def _teacher_targets(config: RunConfig, plan: RunPlan, teacher: Teacher, teacher_train: EncodedSplit,
                     device: torch.device, run_precision: str) -> Any:
    """The teacher's outputs on the training split: live, or from the in-memory / on-disk cache."""
    cache = config.training.teacher_cache
    attention_layers = tuple(t for t, _ in plan.attention_mapping)
    if cache == "off":
        return live_teacher_targets(teacher.model, teacher_train, layers=plan.hidden_layers,
                                    word_level_hidden=not plan.same_tokenizer, attention_layers=attention_layers,
                                    device=device, token_logits=plan.token_logits)
    # Outputs of a bf16 forward differ from fp32 ones: cached under their own key.
    fingerprint = teacher.fingerprint + ("" if run_precision == "fp32" else f"-{run_precision}")
    with precision.autocast(device, run_precision):
        return teacher_targets(
            teacher.model, teacher_train, teacher_fingerprint=fingerprint, layers=plan.hidden_layers,
            word_level_hidden=not plan.same_tokenizer, attention_layers=attention_layers,
            batch_size=config.training.eval_batch_size, device=device,
            cache_dir=home_dir() / "teacher_outputs" if cache == "disk" else None,
            max_bytes=int(config.training.teacher_cache_max_gb * 1e9), token_logits=plan.token_logits)


def train_recipe(config: RunConfig, run_precision: str) -> TrainRecipe:
    return TrainRecipe.from_settings(config.training, precision=run_precision)


def _score(config: RunConfig, corpus: NerCorpus, student: torch.nn.Module, splits: dict[str, EncodedSplit],
           result: TrainResult, device: torch.device, run_precision: str, teacher_f1: float, *,
           distils: bool) -> dict[str, Any]:
    """Dev (the kept checkpoint's), test and train-sample scores, and the diagnosis they give."""
    labels, batch_size = corpus.labels, config.training.eval_batch_size
    if result.kept_scores is not None and result.kept_predictions is not None:
        # The kept weights (best or last eval's): its scores and predictions are the dev result.
        dev_scores, dev_predictions = result.kept_scores, result.kept_predictions
    else:
        dev_scores, dev_predictions = evaluate(student, splits["dev"], labels, batch_size=batch_size,
                                               device=device, precision=run_precision)
    test_scores, _ = evaluate(student, splits["test"], labels, batch_size=batch_size, device=device,
                              precision=run_precision)
    train_split = splits["train"]
    gold_split = EncodedSplit(train_split.sentences[:len(corpus.train)], train_split.encoded[:len(corpus.train)],
                              train_split.pad_id)
    sample = _train_sample(gold_split, config.data.train_sample_size, config.training.seed)
    sample_scores, _ = evaluate(student, sample, labels, batch_size=batch_size, device=device,
                                precision=run_precision)
    gold_types = entity_types([s.tags or () for s in corpus.dev])
    rules = config.diagnosis
    diagnosis, advice = diagnose(dev_scores, sample_scores.f1, gold_types, entity_types(dev_predictions),
                                 teacher_f1=teacher_f1, overfit_gap=rules.overfit_gap, random_floor=rules.random_floor,
                                 underfit_ratio=rules.underfit_ratio,
                                 distils=distils)
    return {"dev": dev_scores, "test": test_scores, "dev_predictions": dev_predictions,
            "train_sample_f1": sample_scores.f1, "diagnosis": diagnosis, "advice": advice}


# Inference speed depends on the models' shapes and inputs, not on their weights: a process measures
# each (student shape, teacher, device, precision, sentences) once; later seeds and trials reuse it.
_SPEEDS: dict[tuple[Any, ...], speed.Speed | None] = {}


def _speed(config: RunConfig, plan: RunPlan, corpus: NerCorpus, student: torch.nn.Module, teacher: Teacher,
           dev: EncodedSplit, device: torch.device, run_precision: str) -> speed.Speed | None:
    """The student's and the teacher's inference speed on the first dev sentences."""
    count = config.training.speed_sentences
    key = (student.config.to_json_string(), getattr(student.config, "_attn_implementation", None),
           teacher.fingerprint, str(device), run_precision, count, hash(tuple(s.tokens for s in corpus.dev[:count])))
    if key not in _SPEEDS:
        teacher_dev = dev if plan.same_tokenizer else encode_sentences(
            corpus.dev[:count], teacher.tokenizer, label_index(corpus.labels), config.data.max_length)
        _SPEEDS[key] = speed.measure(student, teacher.model, dev, teacher_dev, sentences=count, device=device,
                                     precision=run_precision)
    return _SPEEDS[key]


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
        index = label_index(labels)
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
