"""Human-readable names for settings, inits and model pairs (MLflow tags and report columns)."""

from __future__ import annotations

from typing import Any

from distill_lab.packaged import PACKAGED
from distill_lab.spec import RunConfig

INIT_NAMES = {
    "teacher": "fine-tuned teacher weights",
    "pretrained": "pretrained weights",
    "finetuned": "fine-tuned own weights",
    "random": "random",
}


def mapping_name(config: RunConfig) -> str:
    mapping = config.distill.layer_mapping
    return mapping_label(mapping.strategy, mapping.pairs, mapping.include_embeddings)


def mapping_label(strategy: str, pairs: Any = None, include_embeddings: bool = False) -> str:
    """'uniform', 'explicit[0>0,4>1,8>2,11>3]', '+emb' when the embeddings are matched too."""
    name = strategy
    if strategy == "explicit" and pairs:
        name = "explicit[" + ",".join(f"{t}>{s}" for t, s in pairs) + "]"
    return name + ("+emb" if include_embeddings else "")


def setting(config: RunConfig) -> str:
    """Compact distillation setting, e.g. 'T=4 a=0.5/0.5/0 map=uniform'."""
    distill = config.distill
    text = f"T={distill.temperature:.3g} a={distill.alpha_hard:.2g}/{distill.alpha_soft:.2g}/{distill.alpha_hidden:.2g}"
    if distill.alpha_attention:
        text += f"/att{distill.alpha_attention:.2g}"
    if distill.alpha_soft and distill.soft_positions == "all_subtokens":
        text += " soft@subtokens"
    if distill.alpha_hidden or distill.alpha_attention:
        text += f" map={mapping_name(config)}"
    text += _projection(config)
    if distill.class_weights != "none":
        weights = distill.class_weights
        text += " cw=" + (weights if isinstance(weights, str) else ",".join(f"{k}:{v:g}" for k, v in weights.items()))
    data = config.data
    if data.transfer is not None:
        text += f" transfer={'remainder' if data.transfer.from_train_remainder else 'file'}x{data.transfer.ratio:g}"
    augment = getattr(data, "augment", None)
    if augment is not None and getattr(augment, "copies", 0):
        text += f" aug={augment.copies}"
    corrupted = getattr(data, "corrupt", None)
    if corrupted is not None:
        text += "".join(f" drop={kind}" for kind in corrupted.drop_types)
        text += f" shuffled={corrupted.shuffle_labels:g}" if corrupted.shuffle_labels else ""
    return text


def _projection(config: RunConfig) -> str:
    """' proj=linear' / ' proj=conv1d3': the hidden loss of a student narrower than its teacher goes
    through a learned projection, and arms that differ only in it must not share a setting."""
    narrow = config.student.from_teacher is not None and config.student.from_teacher.hidden_size is not None
    if not (config.distill.alpha_hidden and narrow):
        return ""
    projection = config.distill.projection
    text = f" proj={projection.kind}" + (str(projection.kernel_size) if projection.kind == "conv1d" else "")
    return text + (" t>s" if projection.direction == "teacher_to_student" else "")


def init_name(config: RunConfig) -> str:
    init = config.student.init
    if init.strategy == "checkpoint":
        return f"checkpoint {init.checkpoint}"
    return INIT_NAMES[init.strategy]


def teacher_name(display_name: str, layers: int) -> str:
    return f"{display_name} ({layers} layers)"


def student_name(layers: int, init_strategy: str) -> str:
    return f"{layers} layers, init={init_strategy}"


def student_model_name(config: RunConfig, teacher_display: str, layers: int) -> str:
    """'MiniLM (3 layers)': the family of the model the student is built from, and its depth; a student
    narrower than its teacher says its width ('MiniLM (3 layers, 256 wide)')."""
    if config.student.model in PACKAGED:  # 'minilm-l6' -> 'MiniLM', as a student cut from that teacher reads
        family = PACKAGED[config.student.model][1].split("-")[0]
    elif config.student.model:
        family = config.student.model.rstrip("/").split("/")[-1]
    else:
        family = teacher_display.split("-")[0]
    narrow = config.student.from_teacher is not None and config.student.from_teacher.hidden_size is not None
    width = f", {config.student.from_teacher.hidden_size} wide" if narrow else ""
    return f"{family} ({layers} layers{width})"


def run_name(trial_number: int, config: RunConfig) -> str:
    label = f"t{trial_number:03d} T={config.distill.temperature:.3g}"
    if config.distill.alpha_hidden or config.distill.alpha_attention:
        label += f" {mapping_name(config)}"
    return label


def compact_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        short = key.split(".")[-1]
        parts.append(f"{short}={value:.4g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts)
