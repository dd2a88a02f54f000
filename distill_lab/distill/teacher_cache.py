"""Teacher outputs computed once.

The teacher runs in eval mode, so its logits and hidden states for a fixed dataset are
deterministic: compute them once (word-level logits, hidden states of exactly the mapped teacher
layers in fp16) and reuse them in every epoch instead of re-running the teacher each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from distill_lab.data.align import EncodedSplit, bucketed_batches, gather_words
from distill_lab.distill.mapping import hidden_index


@dataclass
class TeacherTargets:
    """Per training sentence: word logits (kept words, labels), per layer hidden (positions, width)."""

    word_logits: list[torch.Tensor]
    hidden: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attentions: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    word_level_hidden: bool = False  # hidden states pooled at first sub-tokens (different tokenizers)

    def batch(self, indices: Sequence[int], n_words: int, n_tokens: int) -> dict[str, object]:
        """Pad the cached outputs of `indices` to the student's batch shape."""
        first = self.word_logits[indices[0]]
        logits = torch.zeros((len(indices), n_words, first.size(-1)), dtype=torch.float32)
        mask = torch.zeros((len(indices), n_words), dtype=torch.bool)
        for row, index in enumerate(indices):
            values = self.word_logits[index][:n_words]
            logits[row, : values.size(0)] = values.float()
            mask[row, : values.size(0)] = True
        hidden_length = n_words if self.word_level_hidden else n_tokens
        hidden = {layer: _pad([states[i] for i in indices], hidden_length) for layer, states in self.hidden.items()}
        attentions = {layer: _pad_square([maps[i] for i in indices], n_tokens) for layer, maps in self.attentions.items()}
        return {"logits": logits, "mask": mask, "hidden": hidden, "attentions": attentions}


def _pad(values: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros((len(values), length, values[0].size(-1)), dtype=values[0].dtype)
    for row, value in enumerate(values):
        value = value[:length]
        out[row, : value.size(0)] = value
    return out


def _pad_square(values: list[torch.Tensor], length: int) -> torch.Tensor:
    heads = values[0].size(0)
    out = torch.zeros((len(values), heads, length, length), dtype=values[0].dtype)
    for row, value in enumerate(values):
        size = min(value.size(-1), length)
        out[row, :, :size, :size] = value[:, :size, :size]
    return out


@torch.no_grad()
def compute_teacher_targets(teacher: torch.nn.Module, split: EncodedSplit, *, layers: Sequence[int] = (),
                            word_level_hidden: bool = False, attention_layers: Sequence[int] = (),
                            batch_size: int = 64, device: torch.device | str = "cpu") -> TeacherTargets:
    """Run the teacher once over `split` (eval mode, no dropout) and keep what the losses need."""
    teacher.eval()
    n = len(split)
    word_logits: list[torch.Tensor] = [torch.empty(0)] * n
    hidden: dict[int, list[torch.Tensor]] = {layer: [torch.empty(0)] * n for layer in layers}
    attentions: dict[int, list[torch.Tensor]] = {layer: [torch.empty(0)] * n for layer in attention_layers}
    for indices in bucketed_batches(split.lengths, batch_size, seed=0, epoch=0, shuffle=False):
        batch = split.batch(indices)
        outputs = teacher(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            output_hidden_states=bool(layers),
            output_attentions=bool(attention_layers),
        )
        positions = batch["word_positions"].to(device)
        logits = gather_words(outputs.logits, positions).float().cpu()
        layer_states = {}
        for layer in layers:
            states = outputs.hidden_states[hidden_index(layer)]
            if word_level_hidden:
                states = gather_words(states, positions)
            layer_states[layer] = states.to(torch.float16).cpu()
        for row, index in enumerate(indices):
            n_words = len(split.encoded[index].word_positions)
            n_tokens = len(split.encoded[index].input_ids)
            word_logits[index] = logits[row, :n_words].clone()
            for layer in layers:
                length = n_words if word_level_hidden else n_tokens
                hidden[layer][index] = layer_states[layer][row, :length].clone()
            for layer in attention_layers:
                attention = outputs.attentions[layer][row, :, :n_tokens, :n_tokens]
                attentions[layer][index] = attention.to(torch.float16).cpu().clone()
    return TeacherTargets(word_logits, hidden, attentions, word_level_hidden)
