"""Model references, tiny models, student configs and the init strategies (copy weights)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from distill_lab import models, tiny_models
from distill_lab.errors import ModelError, SpecError

LABELS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-electra", "tiny-deberta"]
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _teacher(reference: str) -> torch.nn.Module:
    """A stand-in for a fine-tuned teacher: the tiny backbone plus a (random) classifier."""
    torch.manual_seed(0)
    return models.token_classifier_from_backbone(models.resolve_reference(reference), LABELS)


def _student(teacher: torch.nn.Module, n_layers: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(1)
    config = models.student_config_from_teacher(teacher.config, num_layers=n_layers, **overrides)
    return models.token_classifier_from_config(config, LABELS)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.base_model.state_dict().items()}


def _assert_copied(student_state: dict, source_state: dict, layers: list[int]) -> int:
    """Student layer i == source layer layers[i], every other student tensor == the source's."""
    checked = 0
    for key, value in student_state.items():
        match = _LAYER.match(key)
        source_key = f"encoder.layer.{layers[int(match.group(1))]}.{match.group(2)}" if match else key
        assert torch.equal(value, source_state[source_key]), key
        checked += 1
    return checked


# --------------------------------------------------------------------------- resolution
def test_resolve_reference_packaged_tiny_alias_builds_under_home():
    ref = models.resolve_reference("tiny-bert")
    assert ref.kind == "tiny"
    assert ref.display_name == "Tiny-Bert"
    assert Path(ref.location) == Path(os.environ["DISTILL_LAB_HOME"]) / "models" / "tiny-bert"
    assert (Path(ref.location) / "config.json").is_file()
    assert (Path(ref.location) / "model.safetensors").is_file()


def test_resolve_reference_minilm_alias_is_packaged():
    ref = models.resolve_reference("minilm-l6")
    assert (ref.kind, ref.display_name) == ("packaged", "MiniLM-L6")
    assert (Path(ref.location) / "config.json").is_file()
    assert models.num_layers(models.load_config(ref)) == 6


def test_resolve_reference_alias_wins_over_local_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-bert").mkdir()
    (tmp_path / "tiny-bert" / "config.json").write_text("{}")
    assert models.resolve_reference("tiny-bert").kind == "tiny"


def test_resolve_reference_local_dir_wins_over_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert models.resolve_reference("acme/encoder").kind == "hub"  # no such directory yet
    shutil.copytree(models.resolve_reference("tiny-bert").location, tmp_path / "acme" / "encoder")
    ref = models.resolve_reference("acme/encoder")
    assert ref.kind == "local"
    assert ref.location == str((tmp_path / "acme" / "encoder").resolve())
    assert ref.display_name == "encoder"
    assert models.load_config(ref).model_type == "bert"


def test_resolve_reference_hub_id_keeps_field():
    ref = models.resolve_reference("acme/encoder-xyz", field="teacher.model")
    assert (ref.kind, ref.location, ref.display_name, ref.field) == ("hub", "acme/encoder-xyz", "encoder-xyz",
                                                                     "teacher.model")


def test_resolve_reference_dir_without_config_is_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"student\.model: .* without config\.json"):
        models.resolve_reference(str(tmp_path), field="student.model")


@pytest.mark.parametrize("reference", ["./nope", "not a model!", "/no/such/dir", "a/b/c"])
def test_resolve_reference_unknown_names_field_and_aliases(reference):
    with pytest.raises(ModelError) as info:
        models.resolve_reference(reference, field="teacher.model")
    message = str(info.value)
    assert message.startswith(f"teacher.model: {reference!r} is not a packaged alias")
    for alias in models.packaged_aliases():
        assert alias in message
    assert "not an existing local directory" in message


def test_packaged_aliases_lists_minilm_and_all_tiny_variants():
    assert models.packaged_aliases() == [
        "minilm-l6", "mpnet-base", "tiny-bert", "tiny-bert-char", "tiny-roberta", "tiny-roberta-char",
        "tiny-electra", "tiny-electra-char", "tiny-deberta", "tiny-deberta-char", "tiny-mpnet", "tiny-mpnet-char"]


def test_load_config_hub_id_offline_fails_fast_saying_unreachable():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ref = models.resolve_reference("distill-lab-tests/no-such-model", field="teacher.model")
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        models.load_config(ref)
    assert time.perf_counter() - started < 2.0
    message = str(info.value)
    assert message.startswith("teacher.model: 'distill-lab-tests/no-such-model' is not a packaged alias")
    assert "hub is unreachable" in message


# --------------------------------------------------------------------------- tiny models
def test_tiny_word_tokenizer_knows_corpus_words():
    ref = models.resolve_reference("tiny-bert")
    tokenizer = models.load_tokenizer(ref)
    encoded = tokenizer(["Mary", "visited", "Berlin"], is_split_into_words=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "mary", "visited", "berlin", "[SEP]"]
    assert tokenizer.unk_token_id not in encoded["input_ids"]


def test_tiny_char_tokenizer_splits_words_into_characters():
    tokenizer = models.load_tokenizer(models.resolve_reference("tiny-bert-char"))
    encoded = tokenizer(["Mary", "Berlin"], is_split_into_words=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "m", "##a", "##r", "##y", "b", "##e", "##r", "##l", "##i", "##n", "[SEP]"]
    assert encoded.word_ids() == [None, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, None]


def test_tiny_model_shapes_of_each_family():
    shapes = {}
    for reference in FAMILIES:
        config = models.load_config(models.resolve_reference(reference))
        shapes[reference] = (config.model_type, config.num_hidden_layers, config.hidden_size,
                             config.num_attention_heads, config.intermediate_size, config.vocab_size)
    assert shapes == {
        "tiny-bert": ("bert", 4, 32, 2, 64, 739),
        "tiny-roberta": ("roberta", 4, 32, 2, 64, 739),
        "tiny-electra": ("electra", 4, 32, 2, 64, 739),
        "tiny-deberta": ("deberta-v2", 4, 32, 2, 64, 739),
    }


def test_build_tiny_model_rebuilds_a_stale_copy(tmp_path, monkeypatch):
    # A tiny model published by an older version (no marker, 5-token vocabulary) is replaced.
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path))
    stale = tmp_path / "models" / "tiny-bert"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"stale")
    directory = tiny_models.build_tiny_model("bert")
    assert directory == stale
    assert (directory / "model.safetensors").read_bytes() != b"stale"
    tokenizer = models.load_tokenizer(models.resolve_reference("tiny-bert"))
    assert len(tokenizer.get_vocab()) == 739


# --------------------------------------------------------------------------- student configs
def test_student_config_from_teacher_overrides_and_leaves_teacher_alone():
    teacher_config = models.load_config(models.resolve_reference("tiny-bert"))
    config = models.student_config_from_teacher(teacher_config, num_layers=2, hidden_size=16,
                                                num_attention_heads=4, intermediate_size=48)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        2, 16, 4, 48)
    assert (teacher_config.num_hidden_layers, teacher_config.hidden_size, teacher_config.num_attention_heads,
            teacher_config.intermediate_size) == (4, 32, 2, 64)
    assert config.vocab_size == teacher_config.vocab_size == 739
    student = models.token_classifier_from_config(config, LABELS)
    assert models.num_layers(student) == 2 and models.hidden_width(student) == 16
    assert student.config.id2label == dict(enumerate(LABELS))


def test_student_config_from_teacher_only_layers_keeps_width():
    teacher_config = models.load_config(models.resolve_reference("tiny-roberta"))
    config = models.student_config_from_teacher(teacher_config, num_layers=3)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        3, 32, 2, 64)


def test_student_config_from_teacher_electra_keeps_embedding_size():
    teacher_config = models.load_config(models.resolve_reference("tiny-electra"))
    config = models.student_config_from_teacher(teacher_config, num_layers=2, hidden_size=24)
    assert (config.hidden_size, config.embedding_size) == (24, 16)


def test_student_config_hidden_not_divisible_by_teacher_heads():
    teacher_config = models.load_config(models.resolve_reference("tiny-bert"))
    with pytest.raises(SpecError, match=r"student\.from_teacher\.hidden_size: 15 is not divisible by the "
                                        r"teacher's 2 attention heads; set num_attention_heads too"):
        models.student_config_from_teacher(teacher_config, num_layers=2, hidden_size=15)
    # with explicit heads that divide it, the same width is fine
    config = models.student_config_from_teacher(teacher_config, num_layers=2, hidden_size=15, num_attention_heads=3)
    assert (config.hidden_size, config.num_attention_heads) == (15, 3)


def test_student_config_heads_not_dividing_hidden():
    teacher_config = models.load_config(models.resolve_reference("tiny-bert"))
    with pytest.raises(SpecError, match=r"student\.from_teacher\.num_attention_heads: hidden size 32 is not "
                                        r"divisible by 3"):
        models.student_config_from_teacher(teacher_config, num_layers=2, num_attention_heads=3)


# --------------------------------------------------------------------------- select_layers
def test_select_layers_layouts():
    assert models.select_layers("uniform", 4, 2) == [0, 3]
    assert models.select_layers("uniform", 12, 4) == [0, 4, 8, 11]
    assert models.select_layers("first", 4, 3) == [0, 1, 2]
    assert models.select_layers([2, 1], 4, 2) == [2, 1]


def test_select_layers_explicit_out_of_range():
    with pytest.raises(SpecError, match=r"student\.init\.layers: \[4\] out of range; the source has layers 0\.\.3"):
        models.select_layers([0, 4], 4, 2)


def test_select_layers_explicit_wrong_length():
    with pytest.raises(SpecError, match=r"student\.init\.layers: \[0, 1, 2\] has 3 entries but the student has 2"):
        models.select_layers([0, 1, 2], 4, 2)


@pytest.mark.parametrize("choice", ["uniform", "first", [0, 1, 2, 3, 0, 1]])
def test_select_layers_student_deeper_than_source(choice):
    with pytest.raises(SpecError, match=r"student\.init\.layers: .*6.* 4"):
        models.select_layers(choice, 4, 6)


# --------------------------------------------------------------------------- init strategies
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("choice", "layers"), [("uniform", [0, 3]), ("first", [0, 1]), ([2, 1], [2, 1])])
def test_init_teacher_copies_embeddings_layers_and_classifier(family, choice, layers):
    teacher = _teacher(family)
    student = _student(teacher)
    before = _state(student)
    report = models.initialise_student(student, "teacher", choice, fine_tuned_teacher=teacher,
                                       pretrained_source=None, source_name="fine-tuned T")
    assert report.strategy == "teacher" and report.source == "fine-tuned T"
    assert report.layer_pairs == ((0, layers[0]), (1, layers[1]))
    assert report.classifier_copied is True
    after = _state(student)
    teacher_state = _state(teacher)
    checked = _assert_copied(after, teacher_state, layers)
    assert report.copied_tensors == checked  # every student backbone tensor came from the teacher
    assert report.copied_tensors == {"tiny-bert": 37, "tiny-roberta": 37, "tiny-electra": 39, "tiny-deberta": 38}[family]
    assert any(not torch.equal(before[key], after[key]) for key in after)
    for name, tensor in teacher.classifier.state_dict().items():
        assert torch.equal(student.classifier.state_dict()[name], tensor)
    # the student still runs and its logits have the label dimension
    logits = student(input_ids=torch.tensor([[2, 10, 11, 3]])).logits
    assert logits.shape == (1, 4, len(LABELS))


def test_init_teacher_uniform_layer_differs_from_unselected_teacher_layer():
    # guards the weight-by-weight check above: teacher layers are not all alike
    teacher = _teacher("tiny-bert")
    student = _student(teacher)
    models.initialise_student(student, "teacher", "uniform", fine_tuned_teacher=teacher, pretrained_source=None,
                              source_name="t")
    key = "attention.self.query.weight"
    student_layer1 = student.base_model.state_dict()[f"encoder.layer.1.{key}"]
    teacher_state = teacher.base_model.state_dict()
    assert torch.equal(student_layer1, teacher_state[f"encoder.layer.3.{key}"])
    assert not torch.equal(student_layer1, teacher_state[f"encoder.layer.1.{key}"])


@pytest.mark.parametrize("family", FAMILIES)
def test_init_pretrained_copies_backbone_but_not_classifier(family):
    ref = models.resolve_reference(family)
    backbone = models.load_backbone(ref)
    teacher = _teacher(family)
    with torch.no_grad():  # a "fine-tuned" teacher that differs from the backbone everywhere
        for parameter in teacher.parameters():
            parameter.add_(1.0)
    student = _student(teacher)
    head_before = {k: v.clone() for k, v in student.classifier.state_dict().items()}
    report = models.initialise_student(student, "pretrained", "uniform", fine_tuned_teacher=teacher,
                                       pretrained_source=backbone, source_name=ref.display_name)
    assert report.classifier_copied is False
    assert report.layer_pairs == ((0, 0), (1, 3))
    checked = _assert_copied(_state(student), {k: v.detach() for k, v in backbone.state_dict().items()}, [0, 3])
    assert report.copied_tensors == checked
    for name, tensor in student.classifier.state_dict().items():
        assert torch.equal(tensor, head_before[name])
        assert not torch.equal(tensor, teacher.classifier.state_dict()[name])


@pytest.mark.parametrize("family", FAMILIES)
def test_init_random_copies_nothing(family):
    teacher = _teacher(family)
    student = _student(teacher)
    before = _state(student)
    report = models.initialise_student(student, "random", "uniform", fine_tuned_teacher=teacher,
                                       pretrained_source=None, source_name="t")
    assert report == models.InitReport("random", "random", (), 0, False)
    after = _state(student)
    assert all(torch.equal(before[key], after[key]) for key in after)
    teacher_state = _state(teacher)
    key = "encoder.layer.0.attention.self." + ("query_proj" if family == "tiny-deberta" else "query") + ".weight"
    assert not torch.equal(after[key], teacher_state[key])
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_teacher_into_narrower_student_is_model_error(family):
    teacher = _teacher(family)
    student = _student(teacher, hidden_size=16)
    with pytest.raises(ModelError, match=r"student\.init \(teacher from t\): cannot copy .* shapes differ"):
        models.initialise_student(student, "teacher", "uniform", fine_tuned_teacher=teacher, pretrained_source=None,
                                  source_name="t")


def test_init_teacher_explicit_layers_out_of_range_and_wrong_length():
    teacher = _teacher("tiny-bert")
    student = _student(teacher)
    with pytest.raises(SpecError, match=r"out of range; the source has layers 0\.\.3"):
        models.initialise_student(student, "teacher", [0, 9], fine_tuned_teacher=teacher, pretrained_source=None,
                                  source_name="t")
    with pytest.raises(SpecError, match=r"has 3 entries but the student has 2 layers"):
        models.initialise_student(student, "teacher", [0, 1, 2], fine_tuned_teacher=teacher, pretrained_source=None,
                                  source_name="t")


def test_init_teacher_student_deeper_than_teacher_is_spec_error():
    teacher = _teacher("tiny-bert")
    student = _student(teacher, n_layers=6)
    with pytest.raises(SpecError, match=r"the student has 6 layers but the source has only 4"):
        models.initialise_student(student, "teacher", "uniform", fine_tuned_teacher=teacher, pretrained_source=None,
                                  source_name="t")


def test_init_without_source_model_is_model_error():
    teacher = _teacher("tiny-bert")
    with pytest.raises(ModelError, match=r"student\.init\.strategy 'pretrained': no source model available"):
        models.initialise_student(_student(teacher), "pretrained", "uniform", fine_tuned_teacher=teacher,
                                  pretrained_source=None, source_name="t")


def test_copy_classifier_label_count_mismatch():
    teacher = _teacher("tiny-bert")
    config = models.student_config_from_teacher(teacher.config, num_layers=2)
    student = models.token_classifier_from_config(config, ("O", "B-X", "I-X"))
    with pytest.raises(ModelError, match=r"classifier\.weight shapes differ: \(5, 32\) vs \(3, 32\)"):
        models.copy_classifier(teacher, student)


def test_load_token_classifier_rejects_other_labels(tmp_path):
    teacher = _teacher("tiny-bert")
    teacher.save_pretrained(tmp_path)
    loaded = models.load_token_classifier(tmp_path, LABELS)
    assert torch.equal(loaded.classifier.weight, teacher.classifier.weight)
    with pytest.raises(ModelError, match=r"labels .* differ from the data's labels"):
        models.load_token_classifier(tmp_path, ("O", "B-X", "I-X"))


def test_count_parameters_of_tiny_student():
    teacher = _teacher("tiny-bert")
    student = _student(teacher)
    # one BERT layer (hidden 32, ffn 64): q/k/v/o 4*(32*32+32) + 2 LayerNorms 2*64 + ffn (32*64+64) + (64*32+32)
    per_layer = 4 * (32 * 32 + 32) + 2 * 64 + (32 * 64 + 64) + (64 * 32 + 32)
    assert per_layer == 8_544
    assert models.count_parameters(teacher) - models.count_parameters(student) == 2 * per_layer
