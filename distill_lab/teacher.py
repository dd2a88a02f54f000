"""The teacher stage: fine-tune once per fingerprint of (model, data, recipe), then reuse from disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock, Timeout

from distill_lab import models
from distill_lab.data.align import encode_sentences, label_index
from distill_lab.data.corpus import NerCorpus, fingerprint
from distill_lab.distill import resume
from distill_lab.distill.engine import Objective, Progress, TrainRecipe, train
from distill_lab.evaluation import evaluate
from distill_lab.paths import home_dir
from distill_lab.spec import RunConfig, TeacherSpec

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the fine-tune procedure changes, so old teachers are not reused
_LOADED: dict[str, "Teacher"] = {}  # teacher directory -> the teacher this process loaded or fine-tuned
_ATTENTION: dict[str, str | None] = {}  # teacher directory -> its attention implementation when loaded


@dataclass
class Teacher:
    model: torch.nn.Module
    tokenizer: Any
    ref: models.ModelRef
    dev_f1: float
    test_f1: float
    fingerprint: str
    directory: str | None
    reused: bool
    fine_tune_seconds: float = 0.0


def _file_digest(directory: str, name: str = "config.json") -> str:
    path = Path(directory) / name
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else directory


def teacher_fingerprint(config: RunConfig, corpus: NerCorpus, ref: models.ModelRef, precision: str = "fp32") -> str:
    recipe = config.teacher.finetune.model_dump() if config.teacher.finetune else {}
    payload = {
        "version": CACHE_VERSION,
        "model": ref.reference,
        "model_files": _file_digest(ref.location) if ref.kind != "hub" else ref.location,
        "train": fingerprint(corpus.train),
        "dev": fingerprint(corpus.dev),
        "labels": list(corpus.labels),
        "max_length": config.data.max_length,
        "recipe": recipe,
    }
    if precision != "fp32":  # an fp32 teacher keeps the key it had before precision existed
        payload["precision"] = precision
    if ref.kind == "tiny":
        # Tiny models are built locally and their tokenizer can change while config.json does not
        # (older builds mapped every word to [UNK]); a teacher fine-tuned with another tokenizer
        # must not be reused.
        payload["tokenizer_files"] = _file_digest(ref.location, "tokenizer.json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def checkpoint_fingerprint(directory: str | Path) -> str:
    """Identity of an already fine-tuned checkpoint: its resolved path and each file's size and mtime.

    A constant here would let two different checkpoints share cached teacher outputs and tracking
    runs, which are keyed by the teacher's fingerprint.
    """
    root = Path(directory).resolve()
    files = sorted((path.relative_to(root).as_posix(), path.stat().st_size, path.stat().st_mtime_ns)
                   for path in root.rglob("*") if path.is_file())
    payload = json.dumps({"version": CACHE_VERSION, "path": str(root), "files": files}, sort_keys=True)
    return "checkpoint-" + hashlib.sha256(payload.encode()).hexdigest()[:20]


def prepare_teacher(config: RunConfig, corpus: NerCorpus, *, device: torch.device,
                    progress: Progress | None = None, precision: str = "fp32") -> Teacher:
    """Load a fine-tuned teacher from its checkpoint or the cache; fine-tune it on a miss."""
    spec = config.teacher
    ref = models.resolve_reference(spec.model, trust_remote_code=spec.trust_remote_code, field="teacher.model")
    labels = corpus.labels
    if not spec.checkpoint:
        key = teacher_fingerprint(config, corpus, ref, precision)
        directory = home_dir() / "teachers" / key
        loaded = _LOADED.get(str(directory))
        if loaded is not None and (directory / "teacher.json").is_file():
            attention, model = _ATTENTION[str(directory)], loaded.model
            if getattr(model.config, "_attn_implementation", attention) != attention:
                model.set_attn_implementation(attention)  # an attention-loss trial switched it to eager
            return replace(loaded, reused=True)
    model_type = models.load_config(ref).model_type
    tokenizer = models.load_tokenizer(ref, model_type)
    if spec.checkpoint:
        model = models.load_token_classifier(spec.checkpoint, labels, trust_remote_code=spec.trust_remote_code)
        dev = encode_sentences(corpus.dev, tokenizer, label_index(labels), config.data.max_length)
        test = encode_sentences(corpus.test, tokenizer, label_index(labels), config.data.max_length)
        dev_scores, _ = evaluate(model.to(device), dev, labels, device=device, precision=precision)
        test_scores, _ = evaluate(model, test, labels, device=device, precision=precision)
        return Teacher(model, tokenizer, ref, dev_scores.f1, test_scores.f1, checkpoint_fingerprint(spec.checkpoint),
                       spec.checkpoint, True)

    record = directory / "teacher.json"
    if not record.is_file():
        with _fine_tune_lock(directory):
            if not record.is_file():  # not published while this process waited
                return _fine_tune(config, corpus, ref, tokenizer, key, directory, device=device, progress=progress,
                                  precision=precision)
    info = json.loads(record.read_text())
    model = models.load_token_classifier(directory, labels)
    log.info("reusing fine-tuned teacher %s (dev F1 %.4f)", directory, info["dev_f1"])
    return _remember(Teacher(model, tokenizer, ref, info["dev_f1"], info["test_f1"], key, str(directory), True,
                             info.get("fine_tune_seconds", 0.0)))


@contextlib.contextmanager
def _fine_tune_lock(directory: Path) -> Iterator[None]:
    """One fine-tune per teacher across processes: two studies started together on one teacher
    (same fingerprint) fine-tune it once; the second waits, then reads it from the cache. The lock
    is the OS's on an open file: a fine-tune that dies frees it, and the waiter fine-tunes itself."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.with_name(f"{directory.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is fine-tuning teacher %s: waiting for it, then reusing it", directory.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fine_tune(config: RunConfig, corpus: NerCorpus, ref: models.ModelRef, tokenizer: Any, key: str, directory: Path,
               *, device: torch.device, progress: Progress | None, precision: str) -> Teacher:
    recipe_spec = config.teacher.finetune
    assert recipe_spec is not None  # the spec fills a default recipe when no checkpoint is given
    labels = corpus.labels
    torch.manual_seed(recipe_spec.seed)
    model = models.token_classifier_from_backbone(ref, labels)
    label2id = label_index(labels)
    train_split = encode_sentences(corpus.train, tokenizer, label2id, config.data.max_length)
    dev_split = encode_sentences(corpus.dev, tokenizer, label2id, config.data.max_length)
    test_split = encode_sentences(corpus.test, tokenizer, label2id, config.data.max_length)
    # The fine-tune's own recipe; the rest (clipping, batching, loss normalisation, checkpoint) at
    # the engine's defaults: the teacher recipe is part of its cache fingerprint, as written.
    recipe = TrainRecipe.from_settings(recipe_spec, eval_every=10**9, eval_batch_size=config.training.eval_batch_size,
                                       precision=precision)
    with resume.held(resume.for_fine_tune(config, key)) as point:  # a killed fine-tune continues where it was
        result = train(model, train_split, dev_split, labels, recipe, Objective(), device=device, progress=progress,
                       resume=point)
    test_scores, _ = evaluate(model, test_split, labels, batch_size=recipe.eval_batch_size, device=device,
                              precision=precision)
    info = {"dev_f1": result.best_dev_f1, "test_f1": test_scores.f1, "fine_tune_seconds": result.wall_seconds,
            "reference": ref.reference, "recipe": recipe_spec.model_dump(), "steps": result.steps, "precision": precision}
    _publish(model, tokenizer, directory, info)
    resume.discarded(point)
    model.eval()
    return _remember(Teacher(model, tokenizer, ref, result.best_dev_f1, test_scores.f1, key, str(directory), False,
                             result.wall_seconds))


def prepare_init_source(config: RunConfig, corpus: NerCorpus, *, device: torch.device,
                        progress: Progress | None = None, precision: str = "fp32") -> Teacher:
    """Init strategy `finetuned`: the student's own model fine-tuned on the task with `init.finetune`.

    Fine-tuned, cached and reused exactly as a teacher of that model and recipe would be (same
    fingerprint): a study whose KD teacher is another model reuses this fine-tune across trials,
    and another study's teacher of the same model and recipe is the same directory.
    """
    student = config.student
    assert student.model is not None and student.init.finetune is not None  # the spec checks both
    own = TeacherSpec(model=student.model, finetune=student.init.finetune)
    source = prepare_teacher(config.model_copy(update={"teacher": own}), corpus, device=device,
                             progress=progress, precision=precision)
    source.model.eval()
    return source


def _remember(teacher: Teacher) -> Teacher:
    """Keep the teacher for the process's later trials and seeds (the latest two fingerprints).

    A worker's trials then share one loaded teacher instead of reading it from disk for every seed:
    after its fine-tune the teacher is only ever run in eval mode, and a student's init copies its
    weights (never shares them).
    """
    _LOADED[str(teacher.directory)] = teacher
    _ATTENTION[str(teacher.directory)] = getattr(teacher.model.config, "_attn_implementation", None)
    while len(_LOADED) > 2:
        _ATTENTION.pop(_LOADED.pop(next(iter(_LOADED))).directory)
    return teacher


def _publish(model: torch.nn.Module, tokenizer: Any, directory: Path, info: dict[str, Any]) -> None:
    """Write to a staging dir, then rename: a crash never leaves a half-written teacher behind."""
    staging = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "teacher.json").write_text(json.dumps(info, indent=2))
    try:
        staging.rename(directory)
    except OSError:  # another worker published the same teacher first
        shutil.rmtree(staging, ignore_errors=True)
