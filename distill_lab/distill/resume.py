"""Resume points: a training loop's whole state on disk, so a killed run continues where it was.

A seed of a full-set trial trains for an hour on a CPU; a worker killed in its last minutes (Ctrl-C,
`kill`, the machine going away) used to lose all of it, and a re-queued trial re-ran every seed from
step 0. With `training.resume_every_minutes` > 0 the loop saves its state (model, optimizer, schedule,
RNG, the best weights so far, its evaluations) at most that often and once more when training ends,
into one file under `<distill-lab home>/resume/<key>.pt`, written to a temporary file and renamed (a
crash mid-write leaves the previous point). A later run of the same run config and seed on the same
teacher finds it and continues from it; the steps it trains are the steps the killed run would have
trained (tested bit for bit). The caller discards the point when the run's result is recorded.

A point is loaded with `torch.load(weights_only=True)`: tensors and plain Python values only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock, Timeout
from torch import nn

from distill_lab.evaluation import Scores
from distill_lab.paths import home_dir

log = logging.getLogger(__name__)

FORMAT = 1
# Values of the run config that change nothing a step computes: a run that differs only in them resumes.
VOLATILE = {"training": ("num_threads", "resume_every_minutes", "device")}


@dataclass
class LoopState:
    """Where the training loop is: what a resume point restores besides the modules."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # batches of `epoch` already taken
    running: dict[str, float] = field(default_factory=dict)  # loss sums since the last evaluation
    best_state: dict[str, torch.Tensor] | None = None
    elapsed: float = 0.0  # training seconds before this process took over


def resume_key(config: Any, teacher_fingerprint: str) -> str:
    """The run a point belongs to: its resolved config (seed included) less VOLATILE, and its teacher."""
    values = config.model_dump(mode="json")
    for section, names in VOLATILE.items():
        for name in names:
            values.get(section, {}).pop(name, None)
    blob = json.dumps({"config": values, "teacher": teacher_fingerprint, "format": FORMAT}, sort_keys=True)
    return f"run-{_file_name(str(values.get('name', '')))}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _file_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", study)[:60]  # whose point it is, at a glance


def points_of(study: str) -> list[Path]:
    """The resume points runs of `study` left on this machine (for `study run` to say so)."""
    return sorted((home_dir() / "resume").glob(f"run-{_file_name(study)}-*.pt"))


class ResumePoint:
    """One run's resume file, held under a lock while the run trains (a second process running the
    same config and seed at once trains without one rather than overwrite it)."""

    def __init__(self, key: str, every_minutes: float, directory: Path | None = None) -> None:
        self.directory = directory or home_dir() / "resume"
        self.path = self.directory / f"{key}.pt"
        self.every = every_minutes * 60.0
        self._last_save = time.monotonic()
        self._lock: FileLock | None = None

    def acquire(self) -> bool:
        """Take the point's lock for this process; False when another process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("another process is training run %s: this one trains without a resume point",
                        self.path.stem)
            return False
        self._lock, self._last_save = lock, time.monotonic()
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every

    def save(self, modules: dict[str, Any], loop: LoopState, result: Any) -> None:
        """Write the whole state (atomically: a temporary file, then a rename)."""
        state = {
            "format": FORMAT,
            "modules": {name: module.state_dict() for name, module in modules.items() if module is not None},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # not dataclasses.asdict: it would deep-copy the best weights
            "loop": {f.name: getattr(loop, f.name) for f in dataclasses.fields(loop)},
            "result": _result_state(result),
        }
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(state, partial)
            os.replace(partial, self.path)
        except OSError as err:  # e.g. a full disk: the run goes on without this point
            log.warning("resume point %s not written (%s); training goes on", self.path.name, err)
            with contextlib.suppress(OSError):
                partial.unlink()
        self._last_save = time.monotonic()

    def load(self, modules: dict[str, Any], result: Any) -> LoopState | None:
        """Restore a saved state into `modules` and `result`; None when there is none or it does not fit."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            _check_fits(state, modules)
        except Exception as err:  # noqa: BLE001 - an unusable point is dropped, never trusted
            log.warning("resume point %s is unusable (%s): training from step 0", self.path.name, err)
            self.discard()
            return None
        for name, module in modules.items():
            if module is not None:
                module.load_state_dict(state["modules"][name])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        _restore_result(result, state["result"])
        return LoopState(**state["loop"])

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _check_fits(state: dict[str, Any], modules: dict[str, Any]) -> None:
    """Refuse a point of another format or whose module names or tensor shapes differ (before any copy)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"format {state.get('format')!r}, expected {FORMAT}")
    present = {name for name, module in modules.items() if module is not None}
    if set(state["modules"]) != present:
        raise ValueError(f"it holds {sorted(state['modules'])}, this run has {sorted(present)}")
    for name in present:
        module = modules[name]
        if not isinstance(module, nn.Module):
            continue
        saved, own = state["modules"][name], module.state_dict()
        if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
            raise ValueError(f"the {name}'s tensors differ from this run's")


def _scores_state(scores: Scores | None) -> dict[str, Any] | None:
    return None if scores is None else dataclasses.asdict(scores)


def _result_state(result: Any) -> dict[str, Any]:
    return {
        "best_dev_f1": result.best_dev_f1, "best_step": result.best_step, "history": result.history,
        "train_tokens": result.train_tokens,
        "best_dev_scores": _scores_state(result.best_dev_scores), "best_dev_predictions": result.best_dev_predictions,
        "last_dev_scores": _scores_state(result.last_dev_scores), "last_dev_predictions": result.last_dev_predictions,
    }


def _restore_result(result: Any, saved: dict[str, Any]) -> None:
    for name in ("best_dev_f1", "best_step", "history", "train_tokens", "best_dev_predictions",
                 "last_dev_predictions"):
        setattr(result, name, saved[name])
    for name in ("best_dev_scores", "last_dev_scores"):
        setattr(result, name, None if saved[name] is None else Scores(**saved[name]))


def for_run(config: Any, teacher_fingerprint: str) -> ResumePoint | None:
    """The resume point of a run's distillation (None when its spec turns them off: resume_every_minutes 0)."""
    minutes = config.training.resume_every_minutes
    return ResumePoint(resume_key(config, teacher_fingerprint), minutes) if minutes > 0 else None


def for_fine_tune(config: Any, fingerprint: str) -> ResumePoint | None:
    """The resume point of a teacher's (or init source's) fine-tune: its fingerprint names the run."""
    minutes = config.training.resume_every_minutes
    return ResumePoint(f"finetune-{fingerprint}", minutes) if minutes > 0 else None


@contextlib.contextmanager
def held(point: ResumePoint | None) -> Iterator[ResumePoint | None]:
    """The point for this process while the block trains (None when off or another process holds it)."""
    if point is None or not point.acquire():
        yield None
        return
    try:
        yield point
    finally:
        point.release()


def discarded(point: ResumePoint | None) -> None:
    """Discard a point this process held (its run's result is recorded); None for RunResult's field."""
    if point is not None:
        point.discard()
