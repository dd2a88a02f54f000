"""Teacher outputs computed once per sweep.

The teacher runs in eval mode, so its logits and hidden states for a fixed dataset are
deterministic. They are computed once per (teacher fingerprint, data fingerprint, tokenizer, max
length, hidden level) and reused across epochs AND trials: in memory within a process, and as
memory-mapped .npy files under `.distill_lab/teacher_outputs/` so other worker processes on the
host reuse them. Word logits are kept in fp32 (small), hidden states of exactly the mapped teacher
layers in fp16; a trial that needs layers not cached yet adds just those layers. Over the size
limit, the run falls back to a live teacher forward with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distill_lab.data.align import EncodedSplit, bucketed_batches, gather_words
from distill_lab.distill.mapping import hidden_index

log = logging.getLogger(__name__)
_MEMORY: dict[str, "TeacherTargets"] = {}


@dataclass
class TeacherTargets:
    """Flat arrays + offsets: sentence i's words are rows word_offsets[i]:word_offsets[i+1]."""

    word_logits: np.ndarray  # (total kept words, labels) float32
    word_offsets: np.ndarray  # (n + 1,) int64
    hidden: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (total positions, width) fp16
    position_offsets: np.ndarray | None = None  # (n + 1,) int64: tokens, or words when word-level
    attentions: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # in memory only
    word_level_hidden: bool = False
    live: "LiveTeacher | None" = None  # set when outputs are computed per batch instead
    # Logits at every sub-token (rows position_offsets[i]:position_offsets[i+1]; token-level only),
    # for a soft loss over all sub-tokens. None unless a run asked for them.
    token_logits: np.ndarray | None = None

    def batch(self, indices: Sequence[int], n_words: int, n_tokens: int) -> dict[str, object]:
        """Pad the outputs of `indices` to the student's batch shape."""
        if self.live is not None:
            return self.live.batch(indices, n_words, n_tokens)
        logits, mask = _pad_rows(self.word_logits, self.word_offsets, indices, n_words, torch.float32)
        length = n_words if self.word_level_hidden else n_tokens
        hidden = {layer: _pad_rows(values, self.position_offsets, indices, length, torch.float16)[0]
                  for layer, values in self.hidden.items()}
        attentions = {layer: _pad_square([maps[i] for i in indices], n_tokens) for layer, maps in self.attentions.items()}
        out = {"logits": logits, "mask": mask, "hidden": hidden, "attentions": attentions}
        if self.token_logits is not None:
            out["token_logits"], out["token_mask"] = _pad_rows(self.token_logits, self.position_offsets, indices,
                                                               n_tokens, torch.float32)
        return out


def _pad_rows(values: np.ndarray, offsets: np.ndarray, indices: Sequence[int], length: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows offsets[i]:offsets[i+1] of each sentence i in `indices`, padded/cut to `length`; and their mask."""
    out = torch.zeros((len(indices), length, values.shape[-1]), dtype=dtype)
    mask = torch.zeros((len(indices), length), dtype=torch.bool)
    for row, index in enumerate(indices):
        start, end = int(offsets[index]), int(offsets[index + 1])
        count = min(end - start, length)
        # np.array copies: the arrays may be read-only memmaps, which torch warns about.
        out[row, :count] = torch.from_numpy(np.array(values[start:start + count]))
        mask[row, :count] = True
    return out, mask


def _pad_square(values: list[torch.Tensor], length: int) -> torch.Tensor:
    heads = values[0].size(0)
    out = torch.zeros((len(values), heads, length, length), dtype=values[0].dtype)
    for row, value in enumerate(values):
        size = min(value.size(-1), length)
        out[row, :, :size, :size] = value[:, :size, :size]
    return out


class LiveTeacher:
    """Teacher forward per batch (the fallback when the cache would be too large)."""

    def __init__(self, teacher: torch.nn.Module, split: EncodedSplit, layers: Sequence[int], word_level: bool,
                 attention_layers: Sequence[int], device: torch.device | str, token_logits: bool = False):
        self.teacher, self.split, self.layers = teacher, split, tuple(layers)
        self.word_level, self.attention_layers, self.device = word_level, tuple(attention_layers), device
        self.token_logits = token_logits

    @torch.no_grad()
    def batch(self, indices: Sequence[int], n_words: int, n_tokens: int) -> dict[str, object]:
        self.teacher.eval()
        batch = self.split.batch(indices)
        outputs = self.teacher(input_ids=batch["input_ids"].to(self.device),
                               attention_mask=batch["attention_mask"].to(self.device),
                               output_hidden_states=bool(self.layers), output_attentions=bool(self.attention_layers))
        positions = batch["word_positions"].to(self.device)
        logits = _fit_length(gather_words(outputs.logits, positions).float().cpu(), n_words)
        mask = _fit_length(batch["word_mask"], n_words)
        length = n_words if self.word_level else n_tokens
        hidden = {}
        for layer in self.layers:
            states = outputs.hidden_states[hidden_index(layer)]
            if self.word_level:
                states = gather_words(states, positions)
            hidden[layer] = _fit_length(states.to(torch.float16).cpu(), length)
        attentions = {}
        for layer in self.attention_layers:
            maps = outputs.attentions[layer].to(torch.float16).cpu()
            attentions[layer] = _pad_square([m for m in maps], n_tokens)
        out = {"logits": logits, "mask": mask, "hidden": hidden, "attentions": attentions}
        if self.token_logits:
            out["token_logits"] = _fit_length(outputs.logits.float().cpu(), n_tokens)
            out["token_mask"] = _fit_length(batch["attention_mask"].bool(), n_tokens)
        return out


def _fit_length(values: torch.Tensor, length: int) -> torch.Tensor:
    if values.size(1) >= length:
        return values[:, :length]
    shape = list(values.shape)
    shape[1] = length - values.size(1)
    return torch.cat([values, torch.zeros(shape, dtype=values.dtype)], dim=1)


@torch.no_grad()
def _forward_all(teacher: torch.nn.Module, split: EncodedSplit, layers: Sequence[int], word_level: bool,
                 with_logits: bool, batch_size: int, device: torch.device | str,
                 attention_layers: Sequence[int] = (), token_logits: list | None = None,
                 ) -> tuple[np.ndarray | None, dict[int, np.ndarray], dict]:
    """One teacher pass over `split`, in sentence order (flat arrays).

    `token_logits`: a list to fill with each sentence's logits at every sub-token (n_tokens, labels).
    """
    teacher.eval()
    n = len(split)
    per_logits: list[np.ndarray | None] = [None] * n
    if token_logits is not None:
        token_logits[:] = [None] * n
    per_hidden: dict[int, list[np.ndarray | None]] = {layer: [None] * n for layer in layers}
    attentions: dict[int, list[torch.Tensor]] = {layer: [torch.empty(0)] * n for layer in attention_layers}
    for indices in bucketed_batches(split.lengths, batch_size, seed=0, epoch=0, shuffle=False):
        batch = split.batch(indices)
        outputs = teacher(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          output_hidden_states=bool(layers), output_attentions=bool(attention_layers))
        positions = batch["word_positions"].to(device)
        logits = gather_words(outputs.logits, positions).float().cpu().numpy() if with_logits else None
        every = outputs.logits.float().cpu().numpy() if token_logits is not None else None
        states = {}
        for layer in layers:
            value = outputs.hidden_states[hidden_index(layer)]
            if word_level:
                value = gather_words(value, positions)
            states[layer] = value.to(torch.float16).cpu().numpy()
        for row, index in enumerate(indices):
            n_words = len(split.encoded[index].word_positions)
            n_tokens = len(split.encoded[index].input_ids)
            if logits is not None:
                per_logits[index] = logits[row, :n_words]
            if every is not None:
                token_logits[index] = every[row, :n_tokens]
            for layer in layers:
                per_hidden[layer][index] = states[layer][row, : (n_words if word_level else n_tokens)]
            for layer in attention_layers:
                attentions[layer][index] = outputs.attentions[layer][row, :, :n_tokens, :n_tokens].to(torch.float16).cpu()
    flat_logits = np.concatenate(per_logits) if with_logits else None
    flat_hidden = {layer: np.concatenate(values) for layer, values in per_hidden.items()}
    return flat_logits, flat_hidden, attentions


def _offsets(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def cache_key(teacher_fingerprint: str, split: EncodedSplit, word_level: bool) -> str:
    digest = hashlib.sha256()
    digest.update(teacher_fingerprint.encode())
    digest.update(b"word" if word_level else b"token")
    for example in split.encoded:  # token ids pin tokenizer, max length and data together
        digest.update(np.asarray(example.input_ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def estimate_bytes(split: EncodedSplit, n_labels: int, width: int, n_layers: int, word_level: bool,
                   token_logits: bool = False) -> int:
    words = sum(len(e.word_positions) for e in split.encoded)
    tokens = sum(len(e.input_ids) for e in split.encoded)
    positions = words if word_level else tokens
    return words * n_labels * 4 + positions * width * 2 * n_layers + (tokens * n_labels * 4 if token_logits else 0)


def _token_logits(teacher: torch.nn.Module, split: EncodedSplit, batch_size: int, device: torch.device | str) -> np.ndarray:
    per_sentence: list = []
    _forward_all(teacher, split, (), False, False, batch_size, device, token_logits=per_sentence)
    return np.concatenate(per_sentence).astype(np.float32)


def teacher_targets(teacher: torch.nn.Module, split: EncodedSplit, *, teacher_fingerprint: str,
                    layers: Sequence[int] = (), word_level_hidden: bool = False, attention_layers: Sequence[int] = (),
                    batch_size: int = 64, device: torch.device | str = "cpu", cache_dir: Path | None = None,
                    max_bytes: int | None = None, token_logits: bool = False) -> TeacherTargets:
    """Cached teacher outputs for `split` (memory, then disk, then computed), or a live fallback.

    token_logits: also the logits at every sub-token (a soft loss over all sub-tokens); only with
    token-level positions (teacher and student share the tokenizer).
    """
    if token_logits and word_level_hidden:
        raise ValueError("token_logits needs token-level positions: teacher and student must share a tokenizer")
    layers = tuple(sorted(set(layers)))
    width = int(teacher.config.hidden_size)
    n_labels = int(teacher.config.num_labels)
    if max_bytes is not None and estimate_bytes(split, n_labels, width, len(layers), word_level_hidden,
                                                token_logits) > max_bytes:
        log.warning("teacher-output cache would exceed %.1f GB: running the teacher live at every step",
                    max_bytes / 1e9)
        live = LiveTeacher(teacher, split, layers, word_level_hidden, attention_layers, device, token_logits)
        return TeacherTargets(np.zeros((0, n_labels), np.float32), np.zeros(1, np.int64), live=live,
                              word_level_hidden=word_level_hidden)
    key = cache_key(teacher_fingerprint, split, word_level_hidden)
    targets = _MEMORY.get(key)
    if targets is None and cache_dir is not None:
        targets = _load_disk(cache_dir / key)
    if targets is None:
        logits, hidden, _ = _forward_all(teacher, split, layers, word_level_hidden, True, batch_size, device)
        word_counts = [len(e.word_positions) for e in split.encoded]
        position_counts = word_counts if word_level_hidden else [len(e.input_ids) for e in split.encoded]
        targets = TeacherTargets(logits, _offsets(word_counts), hidden, _offsets(position_counts),
                                 word_level_hidden=word_level_hidden)
        if cache_dir is not None:
            _save_disk(cache_dir / key, targets, hidden)
    missing = [layer for layer in layers if layer not in targets.hidden]
    if missing:  # extend the cache with just the layers this trial adds
        _, hidden, _ = _forward_all(teacher, split, missing, word_level_hidden, False, batch_size, device)
        targets.hidden.update(hidden)
        if cache_dir is not None:
            _save_disk(cache_dir / key, targets, hidden)
    if token_logits and targets.token_logits is None:  # added on first request, like a missing layer
        targets.token_logits = _token_logits(teacher, split, batch_size, device)
        if cache_dir is not None:
            _save_disk(cache_dir / key, targets, {})
    _MEMORY[key] = targets
    view = TeacherTargets(targets.word_logits, targets.word_offsets, {l: targets.hidden[l] for l in layers},
                          targets.position_offsets, word_level_hidden=word_level_hidden,
                          token_logits=targets.token_logits if token_logits else None)
    if attention_layers:  # attention maps are large and cheap to skip: kept for this run only
        _, _, attentions = _forward_all(teacher, split, (), False, False, batch_size, device, attention_layers)
        view.attentions = attentions
    return view


def _save_disk(directory: Path, targets: TeacherTargets, new_hidden: dict[int, np.ndarray]) -> None:
    """Each file is written to a temporary name and renamed: readers never see half a file."""
    directory.mkdir(parents=True, exist_ok=True)

    def put(name: str, array: np.ndarray) -> None:
        path = directory / name
        if path.exists():
            return
        temporary = directory / f".{name}.{os.getpid()}.tmp"
        with open(temporary, "wb") as stream:
            np.save(stream, array)
        os.replace(temporary, path)

    put("word_logits.npy", np.asarray(targets.word_logits))
    put("word_offsets.npy", targets.word_offsets)
    put("position_offsets.npy", targets.position_offsets)
    for layer, values in new_hidden.items():
        put(f"hidden_{layer}.npy", values)
    if targets.token_logits is not None:
        put("token_logits.npy", np.asarray(targets.token_logits))
    meta = {"word_level_hidden": targets.word_level_hidden, "layers": sorted(int(p.stem.split("_")[1])
                                                                           for p in directory.glob("hidden_*.npy"))}
    (directory / "meta.json").write_text(json.dumps(meta))


def _load_disk(directory: Path) -> TeacherTargets | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        load = lambda name: np.load(directory / name, mmap_mode="r")  # noqa: E731 - tiny local helper
        hidden = {int(path.stem.split("_")[1]): np.load(path, mmap_mode="r") for path in directory.glob("hidden_*.npy")}
        every = load("token_logits.npy") if (directory / "token_logits.npy").exists() else None
        return TeacherTargets(load("word_logits.npy"), np.asarray(load("word_offsets.npy")), hidden,
                              np.asarray(load("position_offsets.npy")), word_level_hidden=meta["word_level_hidden"],
                              token_logits=every)
    except (OSError, ValueError, KeyError):
        return None


def clear_memory() -> None:
    _MEMORY.clear()



def compute_teacher_targets(teacher: torch.nn.Module, split: EncodedSplit, *, layers: Sequence[int] = (),
                            word_level_hidden: bool = False, attention_layers: Sequence[int] = (),
                            batch_size: int = 64, device: torch.device | str = "cpu",
                            token_logits: bool = False) -> TeacherTargets:
    """Uncached computation (tests and one-off use): same result as `teacher_targets`."""
    layers = tuple(sorted(set(layers)))
    every: list | None = [] if token_logits else None
    logits, hidden, attentions = _forward_all(teacher, split, layers, word_level_hidden, True, batch_size, device,
                                              attention_layers, token_logits=every)
    word_counts = [len(e.word_positions) for e in split.encoded]
    position_counts = word_counts if word_level_hidden else [len(e.input_ids) for e in split.encoded]
    return TeacherTargets(logits, _offsets(word_counts), hidden, _offsets(position_counts), attentions,
                          word_level_hidden, token_logits=np.concatenate(every) if every else None)


def live_teacher_targets(teacher: torch.nn.Module, split: EncodedSplit, *, layers: Sequence[int] = (),
                         word_level_hidden: bool = False, attention_layers: Sequence[int] = (),
                         device: torch.device | str = "cpu", token_logits: bool = False) -> TeacherTargets:
    live = LiveTeacher(teacher, split, tuple(sorted(set(layers))), word_level_hidden, attention_layers, device,
                       token_logits)
    n_labels = int(teacher.config.num_labels)
    return TeacherTargets(np.zeros((0, n_labels), np.float32), np.zeros(1, np.int64), live=live,
                          word_level_hidden=word_level_hidden)


__all__ = ["TeacherTargets", "LiveTeacher", "teacher_targets", "compute_teacher_targets", "live_teacher_targets",
           "clear_memory", "estimate_bytes", "cache_key"]
