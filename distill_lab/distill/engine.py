"""The one training loop, used for teacher fine-tuning and for distillation alike.

Setup, then one loop whose phases are marked: evaluate / forward+backward / step / log.
Pruning reaches the loop only through `on_eval(step, metrics) -> bool` (True = stop now).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from distill_lab.data.align import EncodedSplit, bucketed_batches, gather_words, random_batches
from distill_lab.distill import losses
from distill_lab.distill.mapping import LayerMapping, hidden_index
from distill_lab.distill.projection import project_pair
from distill_lab.distill.resume import LoopState, ResumePoint
from distill_lab.distill.teacher_cache import TeacherTargets
from distill_lab.errors import SpecError, TrialError
from distill_lab.evaluation import Scores, evaluate
from distill_lab.precision import autocast

# lr_schedule name -> transformers.get_scheduler name (all with linear warmup first).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}

OnEval = Callable[[int, dict[str, float]], bool]
Progress = Callable[[int, int], None]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRecipe:
    epochs: float
    learning_rate: float
    batch_size: int
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 13
    eval_every: int = 50
    eval_batch_size: int = 64
    max_steps: int | None = None
    lr_schedule: str = "linear"  # after warmup: linear or cosine decay to 0, or constant (flat)
    fused_optimizer: bool = True
    precision: str = "fp32"  # resolved: fp32 | bf16 | fp16 (autocast, fp32 master weights)
    checkpoint: str = "best_dev"  # which weights the run keeps: best_dev (best evaluation) | last
    batching: str = "length_buckets"  # length_buckets | random
    # batch_mean: each batch's loss is its mean over its words (short-sentence batches weigh as
    # much as long ones); fixed_tokens: its sum over words / the epoch's mean words per batch.
    loss_normalization: str = "batch_mean"

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "TrainRecipe":
        """The recipe from a spec section with the same field names (training, teacher.finetune).

        Fields the section does not have keep the recipe's defaults; `overrides` win over both.
        """
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if hasattr(settings, f.name)}
        return cls(**{**values, **overrides})


@dataclass
class Objective:
    """Loss weights and what the distillation losses compare. Hard-only = plain fine-tuning."""

    alpha_hard: float = 1.0
    alpha_soft: float = 0.0
    alpha_hidden: float = 0.0
    alpha_attention: float = 0.0
    temperature: float = 1.0
    soft_positions: str = "first_subtoken"  # or all_subtokens: every attended sub-token (same tokenizer)
    hidden_kind: str = "mse"
    teacher: TeacherTargets | None = None
    layer_mapping: LayerMapping = ()
    attention_mapping: tuple[tuple[int, int], ...] = ()  # (teacher_layer, student_layer)
    projections: nn.ModuleDict | None = None
    projection_direction: str = "student_to_teacher"
    class_weights: torch.Tensor | None = None
    reference_words: float | None = None  # set by train() for loss_normalization 'fixed_tokens'

    @property
    def needs_hidden(self) -> bool:
        return self.alpha_hidden > 0 and bool(self.layer_mapping)

    @property
    def needs_attention(self) -> bool:
        return self.alpha_attention > 0 and bool(self.attention_mapping)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Forward the student and return every loss part plus their weighted `total`."""
        outputs = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            output_hidden_states=self.needs_hidden,
            output_attentions=self.needs_attention,
        )
        positions = batch["word_positions"].to(device)
        word_logits = gather_words(outputs.logits, positions)
        weights = None if self.class_weights is None else self.class_weights.to(device)
        parts = {"hard": losses.hard_loss(word_logits, batch["labels"].to(device), weights)}
        zero = word_logits.sum() * 0.0
        parts["soft"] = parts["hidden"] = parts["attention"] = zero
        if self.teacher is not None and (self.alpha_soft > 0 or self.needs_hidden or self.needs_attention):
            targets = self.teacher.batch(batch["index"].tolist(), word_logits.size(1), batch["input_ids"].size(1))
            if self.alpha_soft > 0 and self.soft_positions == "all_subtokens":
                mask = batch["attention_mask"].bool().to(device) & targets["token_mask"].to(device)
                parts["soft"] = losses.soft_loss(outputs.logits, targets["token_logits"].to(device), mask,
                                                 self.temperature)
            elif self.alpha_soft > 0:
                mask = batch["word_mask"].to(device) & targets["mask"].to(device)
                parts["soft"] = losses.soft_loss(word_logits, targets["logits"].to(device), mask, self.temperature)
            if self.needs_hidden:
                parts["hidden"] = self._hidden_loss(outputs.hidden_states, targets["hidden"], batch, device,
                                                    teacher_mask=targets["mask"])
            if self.needs_attention:
                parts["attention"] = self._attention_loss(outputs.attentions, targets["attentions"], batch, device)
        if self.reference_words:
            # sum over the batch's words / a fixed word count = mean * (words / reference): every
            # word weighs the same whichever batch it lands in.
            scale = batch["word_mask"].sum().to(device) / self.reference_words
            for name in ("hard", "soft", "hidden"):
                parts[name] = parts[name] * scale
        parts["total"] = (
            self.alpha_hard * parts["hard"]
            + self.alpha_soft * parts["soft"]
            + self.alpha_hidden * parts["hidden"]
            + self.alpha_attention * parts["attention"]
        )
        return parts

    def _hidden_loss(self, student_states: Sequence[torch.Tensor], teacher_states: dict[int, torch.Tensor],
                     batch: dict[str, torch.Tensor], device: torch.device,
                     teacher_mask: torch.Tensor | None = None) -> torch.Tensor:
        assert self.teacher is not None
        word_level = self.teacher.word_level_hidden
        if word_level:
            # Only words both models kept: with different tokenizers the teacher may truncate
            # words the student still sees; its (zero-padded) states there are no target.
            mask = batch["word_mask"].to(device)
            if teacher_mask is not None:
                mask = mask & teacher_mask.to(device)
        else:
            mask = batch["attention_mask"].bool().to(device)
        total = student_states[0].sum() * 0.0
        for group, student_layer in self.layer_mapping:
            # Many-to-one: the mean of a group of teacher layers supervises one student layer.
            teacher_hidden = torch.stack([teacher_states[layer].to(device).float() for layer in group]).mean(0)
            student_hidden = student_states[hidden_index(student_layer)]
            if word_level:
                student_hidden = gather_words(student_hidden, batch["word_positions"].to(device))
            student_hidden, teacher_hidden = project_pair(
                self.projections, self.projection_direction, student_layer, student_hidden, teacher_hidden
            )
            total = total + losses.hidden_loss(student_hidden, teacher_hidden, mask, self.hidden_kind)
        return total / len(self.layer_mapping)

    def _attention_loss(self, student_maps: Sequence[torch.Tensor], teacher_maps: dict[int, torch.Tensor],
                        batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        mask = batch["attention_mask"].bool().to(device)
        total = student_maps[0].sum() * 0.0
        for teacher_layer, student_layer in self.attention_mapping:
            teacher_map = teacher_maps[teacher_layer].to(device).float()
            total = total + losses.attention_loss(student_maps[student_layer], teacher_map, mask)
        return total / len(self.attention_mapping)


@dataclass
class TrainResult:
    best_dev_f1: float
    best_step: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    wall_seconds: float = 0.0
    train_tokens: int = 0
    best_dev_scores: Scores | None = None
    best_dev_predictions: list[list[str]] | None = None  # of the best weights: no re-evaluation
    last_dev_scores: Scores | None = None
    last_dev_predictions: list[list[str]] | None = None  # of the final weights
    checkpoint: str = "best_dev"  # which of the two the model holds after train()
    resumed_from: int = 0  # the step a resume point gave this run (0: trained from the start)

    @property
    def kept_scores(self) -> Scores | None:
        return self.last_dev_scores if self.checkpoint == "last" else self.best_dev_scores

    @property
    def kept_predictions(self) -> list[list[str]] | None:
        return self.last_dev_predictions if self.checkpoint == "last" else self.best_dev_predictions

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


def adamw_kernel(parameters: Sequence[torch.Tensor], device: torch.device, fused: bool) -> dict[str, bool]:
    """`fused=True` for torch.optim.AdamW where its fused kernel applies (float tensors on CPU or CUDA)."""
    if fused and device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in parameters):
        return {"fused": True}
    return {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def _optimizer(model: nn.Module, objective: Objective, recipe: TrainRecipe,
               device: torch.device) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the model and any projections; no weight decay on biases and LayerNorm weights."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if objective.projections is not None:
        trainable += list(objective.projections.parameters())
    no_decay = [p for p in trainable if p.ndim < 2]
    decay = [p for p in trainable if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate, **adamw_kernel(trainable, device, recipe.fused_optimizer),
    )
    return optimizer, trainable


def _evaluate(model: nn.Module, dev_split: EncodedSplit, labels: Sequence[str], recipe: TrainRecipe,
              device: torch.device, result: TrainResult, running: dict[str, float], *, lr: float, epoch: int,
              step: int) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
    """One dev evaluation: its metrics (with the mean losses since the last), and the weights if it is the best."""
    scores, predictions = evaluate(model, dev_split, labels, batch_size=recipe.eval_batch_size,
                                   device=device, precision=recipe.precision)
    count = running.pop("_count")
    metrics = {f"loss_{name}": value / count for name, value in running.items()}
    metrics.update(dev_f1=scores.f1, dev_precision=scores.precision, dev_recall=scores.recall,
                   learning_rate=lr, epoch=epoch + 1, step=step)
    result.history.append(metrics)
    result.last_dev_scores, result.last_dev_predictions = scores, predictions
    best_state = None
    if scores.f1 > result.best_dev_f1:
        result.best_dev_f1, result.best_step, result.best_dev_scores = scores.f1, step, scores
        result.best_dev_predictions = predictions
        if recipe.checkpoint == "best_dev":  # 'last' keeps the final weights: no copy needed
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return metrics, best_state


def _prepare(model: nn.Module, train_split: EncodedSplit, recipe: TrainRecipe, objective: Objective,
             device: torch.device) -> tuple[torch.optim.Optimizer, list[nn.Parameter], LRScheduler, int, Objective]:
    """Setup: refuse what cannot train, seed, place the model, build the optimizer and schedule.

    Returns the optimizer, its parameters, the scheduler, the total step count and the objective
    (with its reference word count for loss_normalization 'fixed_tokens').
    """
    if len(train_split) == 0:  # the epoch loop would never end
        raise TrialError("the training split has no sentences; nothing to train on")
    if recipe.lr_schedule not in SCHEDULES:
        raise TrialError(f"lr_schedule {recipe.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    torch.manual_seed(recipe.seed)
    model.to(device)
    if objective.projections is not None:
        objective.projections.to(device)
    optimizer, trainable = _optimizer(model, objective, recipe, device)
    batches_per_epoch = math.ceil(len(train_split) / recipe.batch_size)
    total_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * batches_per_epoch))
    scheduler = get_scheduler(SCHEDULES[recipe.lr_schedule], optimizer,
                              num_warmup_steps=int(recipe.warmup_ratio * total_steps), num_training_steps=total_steps)
    if recipe.loss_normalization == "fixed_tokens":
        objective = dataclasses.replace(
            objective, reference_words=sum(len(e.word_positions) for e in train_split.encoded) / batches_per_epoch)
    return optimizer, trainable, scheduler, total_steps, objective


def train(model: nn.Module, train_split: EncodedSplit, dev_split: EncodedSplit, labels: Sequence[str],
          recipe: TrainRecipe, objective: Objective, *, device: torch.device | None = None,
          on_eval: OnEval | None = None, progress: Progress | None = None,
          resume: ResumePoint | None = None) -> TrainResult:
    """Train `model` on `train_split`, evaluating on `dev_split`; the best dev-F1 weights are kept.

    `resume`: this run's resume point (held by the caller): its saved state, if any, is where the loop
    starts, and the loop saves there as often as the point says and when training ends.
    """
    device = device or torch.device("cpu")
    optimizer, trainable, scheduler, total_steps, objective = _prepare(model, train_split, recipe, objective, device)
    batches = bucketed_batches if recipe.batching == "length_buckets" else random_batches
    result = TrainResult(best_dev_f1=-1.0, best_step=0, steps=0, checkpoint=recipe.checkpoint)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "projections": objective.projections}
    loop = _resumed(resume, modules, result, on_eval)
    started = time.perf_counter()
    model.train()
    while loop.step < total_steps and not result.stopped_early:
        for position, indices in enumerate(batches(train_split.lengths, recipe.batch_size, seed=recipe.seed,
                                                   epoch=loop.epoch)):
            if position < loop.epoch_step:  # taken before the resume point
                continue
            if loop.step >= total_steps:
                break
            batch = train_split.batch(indices)
            with autocast(device, recipe.precision):  # forward
                parts = objective.losses(model, batch, device)
            if not torch.isfinite(parts["total"]):
                raise TrialError(f"loss became {parts['total'].item()} at step {loop.step + 1} (lower the learning rate?)")
            optimizer.zero_grad(set_to_none=True)  # backward, step
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(trainable, recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loop.step, loop.epoch_step = loop.step + 1, loop.epoch_step + 1
            result.train_tokens += int(batch["attention_mask"].sum())
            for name, value in parts.items():
                loop.running[name] = loop.running.get(name, 0.0) + float(value.detach())
            loop.running["_count"] = loop.running.get("_count", 0.0) + 1
            if progress is not None:
                progress(loop.step, total_steps)
            if (recipe.eval_every and loop.step % recipe.eval_every == 0) or loop.step == total_steps:  # evaluate + log
                metrics, state = _evaluate(model, dev_split, labels, recipe, device, result, loop.running,
                                           lr=optimizer.param_groups[0]["lr"], epoch=loop.epoch, step=loop.step)
                loop.running, loop.best_state = {}, state if state is not None else loop.best_state
                if on_eval is not None and on_eval(loop.step, metrics):
                    result.stopped_early = True
                    break
            if resume is not None and loop.step < total_steps and resume.due():
                resume.save(modules, _elapsed(loop, started), result)
        loop.epoch, loop.epoch_step = loop.epoch + 1, 0
    result.steps = loop.step
    result.wall_seconds = _elapsed(loop, started).elapsed
    if resume is not None and not result.stopped_early and (resume.due() or resume.path.exists()):
        resume.save(modules, _elapsed(loop, started), result)  # a finished seed: a re-run only scores it
    if loop.best_state is not None and recipe.checkpoint == "best_dev":
        model.load_state_dict(loop.best_state)
    model.eval()
    return result


def _elapsed(loop: LoopState, started: float) -> LoopState:
    return dataclasses.replace(loop, elapsed=loop.elapsed + time.perf_counter() - started)


def _resumed(resume: ResumePoint | None, modules: dict[str, Any], result: TrainResult,
             on_eval: OnEval | None) -> LoopState:
    """The loop's state: fresh, or a resume point's, whose evaluations the caller then hears again."""
    loop = resume.load(modules, result) if resume is not None else None
    if loop is None:
        return LoopState()
    result.resumed_from = loop.step
    log.warning("resuming from step %d (a resume point an earlier run of this config and seed left)", loop.step)
    for metrics in result.history:  # for the caller's records and pruner, as if this run had made them
        if on_eval is not None and on_eval(int(metrics["step"]), dict(metrics)):
            result.stopped_early = True
            break
    return loop
