"""A distilled student as a Hugging Face model directory: weights, tokenizer, config and model card.

Training and scoring label only the first sub-token of each word (`data/align.py`), so the student's
predictions at later sub-tokens were never trained: a pipeline must read each word's label at its
first sub-token, which is transformers' `aggregation_strategy="first"`. The directory says so three
times: in the card's usage snippet, in `config.json` (`task_specific_params`, read by
`student_pipeline`) and in the MLflow Model's inference config (`export.log_student_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from distill_lab.errors import ModelError

TASK = "token-classification"
AGGREGATION = "first"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class StudentFacts:
    """What the card says about one student: the trial record's tags and metrics, its run config,
    the spec it came from, and where it came from (study, trial, run, re-trained or not)."""

    tags: Mapping[str, Any]  # teacher, student, student_model, seeds, diagnosis, ... (TrialRecord.to_mlflow)
    metrics: Mapping[str, float]  # best_dev_f1, test_f1, dev_f1_seed<N>, teacher_dev_f1, student_params, ...
    config: Mapping[str, Any]  # the resolved run config (RunConfig.model_dump(mode="json"))
    spec: Mapping[str, Any]  # the spec as written (no secrets expanded)
    params: Mapping[str, Any] = field(default_factory=dict)  # the trial's searched values
    provenance: Mapping[str, Any] = field(default_factory=dict)  # study, trial, run_id, weights, check

    def seeds(self) -> list[int]:
        return [int(seed) for seed in str(self.tags.get("seeds", "")).split(",") if seed.strip()]


def save_student(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Write the student as safetensors with its tokenizer; config.json records the aggregation."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"student tokenizer {type(tokenizer).__name__}: a fast tokenizer is needed for "
                         f"aggregation_strategy={AGGREGATION!r} (word ids); allowed: *TokenizerFast")
    directory.mkdir(parents=True, exist_ok=True)
    model.config.task_specific_params = {TASK: {"aggregation_strategy": AGGREGATION}}
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def student_pipeline(directory: str | Path, **kwargs: Any) -> Any:
    """`transformers.pipeline("token-classification")` on an exported student, with the aggregation
    its config records (`first`: whole words, one label per word, as it was trained and scored)."""
    import transformers

    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    saved = (config.get("task_specific_params") or {}).get(TASK, {})
    kwargs.setdefault("aggregation_strategy", saved.get("aggregation_strategy", AGGREGATION))
    return transformers.pipeline(TASK, model=str(directory), tokenizer=str(directory), **kwargs)


def _f1(value: Any) -> str:
    return f"{float(value) * 100:.2f}" if value is not None else "-"


def _scores_table(facts: StudentFacts) -> str:
    metrics = facts.metrics
    lines = ["| seed | dev F1 | test F1 |", "|---:|---:|---:|"]
    for seed in facts.seeds():
        lines.append(f"| {seed} | {_f1(metrics.get(f'dev_f1_seed{seed}'))} | {_f1(metrics.get(f'test_f1_seed{seed}'))} |")
    lines.append(f"| mean | {_f1(metrics.get('best_dev_f1'))} | {_f1(metrics.get('test_f1'))} |")
    return "\n".join(lines)


def _recipe(config: Mapping[str, Any]) -> list[str]:
    distill, training, student = config["distill"], config["training"], config["student"]
    mapping = distill.get("layer_mapping") or {}
    return [
        f"- loss: alpha_hard {distill['alpha_hard']:g} (gold CE), alpha_soft {distill['alpha_soft']:g} "
        f"(KL at T={distill['temperature']:g}, x T^2), alpha_hidden {distill['alpha_hidden']:g}, "
        f"alpha_attention {distill['alpha_attention']:g}; layer mapping {mapping.get('strategy', '-')}",
        f"- student init: {student['init']['strategy']} (layers {student['init']['layers']})",
        f"- training: {training['epochs']} epoch(s), max_steps {training['max_steps']}, lr {training['learning_rate']:g} "
        f"({training['lr_schedule']}), batch {training['batch_size']}, precision {training['precision']}, "
        f"kept checkpoint {training['checkpoint']}",
        f"- data: {config['data']['source']}, max_length {config['data']['max_length']}",
    ]


def _speed_line(metrics: Mapping[str, float]) -> str:
    if metrics.get("speedup") is None:
        return "- inference speed: not measured by this run (training.speed_sentences 0, or an older run)"
    return (f"- inference speed (batch 32, the run's device and precision, median of 3 passes): student "
            f"{float(metrics['student_sentences_per_s']):.0f} vs teacher {float(metrics['teacher_sentences_per_s']):.0f} "
            f"sentences/s, {float(metrics['speedup']):.2f}x")


def card_text(facts: StudentFacts) -> str:
    """The model card (README.md): how to load it, teacher, student, recipe, scores, params, spec."""
    tags, metrics, origin = facts.tags, facts.metrics, facts.provenance
    name = origin.get("title") or facts.config.get("name", "student")
    header = yaml.safe_dump({"library_name": "transformers", "pipeline_tag": TASK,
                             "tags": ["distill-lab", "knowledge-distillation", "ner"]}, sort_keys=False)
    compression = metrics.get("compression")
    usage = (f'from transformers import pipeline\n\nner = pipeline("{TASK}", model="PATH_TO_THIS_DIRECTORY",\n'
             f'               aggregation_strategy="{AGGREGATION}")\nner("Angela Merkel visited Washington.")')
    parts = [
        f"---\n{header}---\n", f"# {name}\n",
        f"A {tags.get('student_model', '?')} token classifier (NER) distilled with distill-lab from the "
        f"teacher {tags.get('teacher', '?')}.\n",
        "## Use\n", f"```python\n{usage}\n```\n",
        f'Use `aggregation_strategy="{AGGREGATION}"`: the student was trained and scored on the label of the '
        "first sub-token of each word, so a word split into several sub-tokens is one entity with that "
        'label. `"simple"` or `"none"` read the untrained later sub-tokens and can split one word into '
        "several entities. `config.json` records this under `task_specific_params`. Words are what the "
        "tokenizer's pre-tokenizer splits; training data split words on whitespace only, so a token with "
        "inner punctuation (`Saint-Germain`) was one word in training and is several here.\n",
        "## Scores (seqeval entity-level micro F1, kept checkpoint)\n", _scores_table(facts) + "\n",
        f"Teacher: dev {_f1(metrics.get('teacher_dev_f1'))}, test {_f1(metrics.get('teacher_test_f1'))}. "
        f"Retention {float(metrics.get('retention', 0)) * 100:.1f} % of the teacher's dev F1.\n",
        "## Models\n",
        f"- teacher: {tags.get('teacher', '?')}, {int(metrics.get('teacher_params', 0)):,} parameters",
        f"- student: {tags.get('student_model', '?')} ({tags.get('student', '?')}), "
        f"{int(metrics.get('student_params', 0)):,} parameters"
        + (f", {float(compression):.2f}x fewer" if compression else ""),
        _speed_line(metrics),
        f"- diagnosis: {tags.get('diagnosis', '-')}\n",
        "## Recipe\n", "\n".join(_recipe(facts.config)) + "\n",
    ]
    if facts.params:
        parts += ["## Searched values of this trial\n",
                  "```json\n" + json.dumps(dict(facts.params), indent=2, sort_keys=True, default=str) + "\n```\n"]
    parts += ["## Provenance\n", "\n".join(f"- {key}: {value}" for key, value in origin.items() if key != "title")
              + "\n", "## The exact spec\n",
              "```yaml\n" + yaml.safe_dump(dict(facts.spec), sort_keys=False).rstrip() + "\n```\n"]
    return "\n".join(parts)


def write_card(directory: Path, facts: StudentFacts) -> Path:
    path = directory / CARD_FILE
    path.write_text(card_text(facts), encoding="utf-8")
    return path
