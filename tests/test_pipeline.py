"""One distillation run: word-level KD across tokenizers, teacher cache, training loop, losses."""

from __future__ import annotations

import logging
import math
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from distill_lab import models, naming, pipeline
from distill_lab.data.align import encode_sentences
from distill_lab.data.corpus import NerCorpus, Sentence
from distill_lab.data.loader import load_corpus
from distill_lab.distill import losses
from distill_lab.distill.engine import Objective
from distill_lab.plan import load_plan
from distill_lab.distill.mapping import EMBEDDINGS, build_mapping, describe, teacher_layers_needed
from distill_lab.distill.projection import build_projections
from distill_lab.distill.teacher_cache import compute_teacher_targets
from distill_lab.errors import ModelError, SpecError, TrialError
from distill_lab.evaluation import evaluate
from distill_lab.pipeline import build_student, class_weight_tensor, run_distillation
from distill_lab.spec import DataSpec, RunConfig, SyntheticSpec, parse_spec, resolve
from distill_lab.teacher import prepare_teacher
from tiny_specs import TINY_RUN

CPU = torch.device("cpu")
SYNTHETIC_LABELS = ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")

# Small enough for ~1 s per run; the teacher is fine-tuned once per session and then cached.
BASE = TINY_RUN
# The end-to-end setting: a teacher that really learns (~0.7 dev F1) and a randomly initialised student.
E2E = [
    "data.synthetic={n_train: 300, n_dev: 100, n_test: 20}", "data.max_length=64",
    "teacher.finetune={epochs: 6, learning_rate: 3.0e-3, batch_size: 16}",
    "student.init.strategy=random", "training.epochs=6", "training.learning_rate=3.0e-3", "training.eval_every=20",
]


def _config(*overrides: str) -> RunConfig:
    return resolve(parse_spec(BASE, overrides, source="test"))


# --------------------------------------------------------------------------- word-level KD
SENTENCES = (
    Sentence(("Mary", "visited", "Berlin", "on", "Monday", "."), ("B-PER", "O", "B-LOC", "O", "O", "O")),
    Sentence(("Reuters", "reported", "that", "John", "Smith", "flew", "to", "Tokyo", "."),
             ("B-ORG", "O", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "O")),
    Sentence(("The", "World", "Bank", "met", "in", "Paris", "."), ("O", "B-ORG", "I-ORG", "O", "O", "B-LOC", "O")),
)
HAND_LABELS = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
LABEL2ID = {label: i for i, label in enumerate(HAND_LABELS)}


def _tokenizer(reference: str):
    return models.load_tokenizer(models.resolve_reference(reference))


def _classifier(reference: str, seed: int, hidden_size: int | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = models.resolve_reference(reference)
    if hidden_size is None:
        model = models.token_classifier_from_backbone(ref, HAND_LABELS)
    else:
        config = models.student_config_from_teacher(models.load_config(ref), num_layers=2, hidden_size=hidden_size)
        model = models.token_classifier_from_config(config, HAND_LABELS)
    return model.eval()


def test_word_and_char_tokenizers_give_different_token_counts():
    word = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 64)
    char = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 64)
    # word vocabulary: one token per word + [CLS]/[SEP]; characters: one token per character
    assert word.lengths == [8, 11, 9]
    assert char.lengths == [2 + sum(len(w) for w in s.tokens) for s in SENTENCES] == [28, 42, 25]
    # ... but both keep one position per word and the same labels
    assert [len(e.word_positions) for e in word.encoded] == [len(e.word_positions) for e in char.encoded] == [6, 9, 7]
    assert [e.labels for e in word.encoded] == [e.labels for e in char.encoded]
    assert char.encoded[0].word_positions == (1, 5, 12, 18, 20, 26)


def _soft_by_hand(student, student_split, teacher, teacher_split, temperature):
    """T^2 * mean over words kept by both models of KL(teacher || student), one sentence at a time."""
    terms = []
    for s_enc, t_enc in zip(student_split.encoded, teacher_split.encoded):
        k = min(len(s_enc.word_positions), len(t_enc.word_positions))
        s_logits = student(input_ids=torch.tensor([s_enc.input_ids])).logits[0, list(s_enc.word_positions[:k])]
        t_logits = teacher(input_ids=torch.tensor([t_enc.input_ids])).logits[0, list(t_enc.word_positions[:k])]
        log_p_t = F.log_softmax(t_logits / temperature, -1)
        log_p_s = F.log_softmax(s_logits / temperature, -1)
        terms.append((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1))
    return torch.cat(terms).mean() * temperature**2, sum(t.numel() for t in terms)


@torch.no_grad()
def test_soft_loss_across_tokenizers_is_computed_at_word_positions(monkeypatch):
    teacher, student = _classifier("tiny-bert", 0), _classifier("tiny-bert-char", 1)
    # max_length 20 cuts the character-level student after 4, 3 and 6 words; the teacher keeps all
    teacher_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 20)
    student_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 20)
    assert [len(e.word_positions) for e in teacher_split.encoded] == [6, 9, 7]
    assert [len(e.word_positions) for e in student_split.encoded] == [4, 3, 6]
    targets = compute_teacher_targets(teacher, teacher_split, batch_size=2)
    full = targets.batch([0, 1, 2], 9, 11)  # one row of teacher logits per word the teacher kept
    assert full["logits"].shape == (3, 9, 7) and full["mask"].sum(1).tolist() == [6, 9, 7]
    masks = []
    original = losses.soft_loss

    def spy(student_logits, teacher_logits, mask, temperature):
        masks.append(mask.clone())
        return original(student_logits, teacher_logits, mask, temperature)

    monkeypatch.setattr(losses, "soft_loss", spy)
    objective = Objective(alpha_hard=0.0, alpha_soft=1.0, temperature=3.0, teacher=targets)
    parts = objective.losses(student, student_split.batch([0, 1, 2]), CPU)
    assert len(masks) == 1
    assert masks[0].sum(1).tolist() == [4, 3, 6]  # words kept by both models
    expected, n_words = _soft_by_hand(student, student_split, teacher, teacher_split, 3.0)
    assert n_words == 13
    assert math.isfinite(parts["soft"].item()) and parts["soft"].item() > 0
    assert parts["soft"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["total"].item() == pytest.approx(parts["soft"].item(), rel=1e-6)
    assert parts["hard"].item() > 0 and parts["hidden"].item() == 0.0


@torch.no_grad()
def test_soft_loss_over_all_subtokens_covers_every_attended_token():
    # A shared tokenizer that splits words ("##" pieces): all sub-tokens are more positions than words.
    teacher, student = _classifier("tiny-bert-char", 0), _classifier("tiny-bert-char", 1)
    split = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 64)
    targets = compute_teacher_targets(teacher, split, batch_size=2, token_logits=True)
    objective = Objective(alpha_hard=0.0, alpha_soft=1.0, temperature=2.0, teacher=targets,
                          soft_positions="all_subtokens")
    parts = objective.losses(student, split.batch([0, 1, 2]), CPU)
    terms = []  # by hand: T^2 * mean over every attended token ([CLS], pieces, [SEP]) of KL(t || s)
    for encoded in split.encoded:
        ids = torch.tensor([encoded.input_ids])
        log_p_t = F.log_softmax(teacher(input_ids=ids).logits[0] / 2.0, -1)
        log_p_s = F.log_softmax(student(input_ids=ids).logits[0] / 2.0, -1)
        terms.append((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1))
    assert sum(t.numel() for t in terms) == 28 + 42 + 25  # every token, not the 22 words
    assert parts["soft"].item() == pytest.approx((torch.cat(terms).mean() * 4.0).item(), rel=1e-5)
    first = Objective(alpha_hard=0.0, alpha_soft=1.0, temperature=2.0, teacher=targets).losses(
        student, split.batch([0, 1, 2]), CPU)
    assert first["soft"].item() != pytest.approx(parts["soft"].item(), rel=1e-3)  # another set of positions


def test_run_with_soft_loss_over_all_subtokens_uses_the_cached_token_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path))
    config = _config("distill.soft_positions=all_subtokens", "training.teacher_cache=disk")
    result = run_distillation(config)
    last = result.train_result.history[-1]
    assert math.isfinite(last["loss_soft"]) and last["loss_soft"] > 0
    assert [p.name for p in (tmp_path / "teacher_outputs").glob("*/token_logits.npy")] == ["token_logits.npy"]
    assert "soft@subtokens" in naming.setting(config)


def test_soft_loss_over_all_subtokens_across_tokenizers_is_spec_error_before_teacher(monkeypatch):
    monkeypatch.setattr(pipeline, "prepare_teacher", _no_teacher)
    config = _config("student={model: tiny-bert-char, init: {strategy: random}}", "distill.alpha_soft=1.0",
                     "distill.soft_positions=all_subtokens")
    with pytest.raises(SpecError, match=r"distill\.soft_positions: all_subtokens .* needs teacher and student "
                                        r"to share a tokenizer"):
        run_distillation(config)


def _hidden_by_hand(student, student_split, teacher, teacher_split, pairs, projections):
    """Mean over mapped layers of the MSE at the words both models kept (teacher states in fp16)."""
    per_layer = []
    for teacher_layer, student_layer in pairs:
        diffs = []
        for s_enc, t_enc in zip(student_split.encoded, teacher_split.encoded):
            k = min(len(s_enc.word_positions), len(t_enc.word_positions))
            s_states = student(input_ids=torch.tensor([s_enc.input_ids]), output_hidden_states=True).hidden_states
            t_states = teacher(input_ids=torch.tensor([t_enc.input_ids]), output_hidden_states=True).hidden_states
            s_words = s_states[student_layer + 1][:, list(s_enc.word_positions[:k])]
            t_words = t_states[teacher_layer + 1][:, list(t_enc.word_positions[:k])].half().float()
            if projections is not None:
                s_words = projections[str(student_layer)](s_words)
            diffs.append((s_words - t_words).reshape(-1))
        per_layer.append(torch.cat(diffs).pow(2).mean())
    return torch.stack(per_layer).mean()


@torch.no_grad()
def test_hidden_loss_with_the_embedding_output_matches_hidden_states_zero():
    teacher = _classifier("tiny-bert", 0)
    student = _classifier("tiny-bert-char", 1, hidden_size=16)
    teacher_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 20)
    student_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 20)
    mapping = build_mapping("uniform", 4, 2, include_embeddings=True)
    assert mapping == (((EMBEDDINGS,), EMBEDDINGS), ((0,), 0), ((3,), 1))
    assert describe(mapping) == "emb->emb 0->0 3->1"
    targets = compute_teacher_targets(teacher, teacher_split, layers=teacher_layers_needed(mapping),
                                      word_level_hidden=True)
    assert set(targets.hidden) == {EMBEDDINGS, 0, 3}
    torch.manual_seed(5)
    projections = build_projections(mapping, 16, 32, "linear", "student_to_teacher")
    assert set(projections) == {"-1", "0", "1"}  # the embeddings get their own projection
    objective = Objective(alpha_hard=0.0, alpha_hidden=1.0, teacher=targets, layer_mapping=mapping,
                          projections=projections, projection_direction="student_to_teacher")
    parts = objective.losses(student, student_split.batch([0, 1, 2]), CPU)
    # _hidden_by_hand reads hidden_states[layer + 1]: the embeddings (-1) are hidden_states[0].
    expected = _hidden_by_hand(student, student_split, teacher, teacher_split, [(-1, -1), (0, 0), (3, 1)],
                               projections)
    assert parts["hidden"].item() == pytest.approx(expected.item(), rel=1e-5)
    without = _hidden_by_hand(student, student_split, teacher, teacher_split, [(0, 0), (3, 1)], projections)
    assert parts["hidden"].item() != pytest.approx(without.item(), rel=1e-3)


@torch.no_grad()
def test_hidden_loss_across_tokenizers_pools_words_and_projects_width():
    teacher = _classifier("tiny-bert", 0)
    student = _classifier("tiny-bert-char", 1, hidden_size=16)  # narrower and another tokenizer
    teacher_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 20)
    student_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 20)
    mapping = build_mapping("uniform", 4, 2)
    assert mapping == (((0,), 0), ((3,), 1))
    targets = compute_teacher_targets(teacher, teacher_split, layers=(0, 3), word_level_hidden=True)
    full = targets.batch([0, 1, 2], 9, 11)
    assert full["hidden"][3].shape == (3, 9, 32)  # words, not tokens
    assert full["hidden"][3].dtype == torch.float16
    assert full["hidden"][3][0, 6:].abs().sum() == 0 and full["hidden"][3][0, :6].abs().sum() > 0
    torch.manual_seed(5)
    projections = build_projections(mapping, 16, 32, "linear", "student_to_teacher")
    objective = Objective(alpha_hard=0.0, alpha_hidden=1.0, teacher=targets, layer_mapping=mapping,
                          projections=projections, projection_direction="student_to_teacher")
    parts = objective.losses(student, student_split.batch([0, 1, 2]), CPU)
    expected = _hidden_by_hand(student, student_split, teacher, teacher_split, [(0, 0), (3, 1)], projections)
    assert math.isfinite(parts["hidden"].item()) and parts["hidden"].item() > 0
    assert parts["hidden"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["soft"].item() == 0.0


@torch.no_grad()
def test_hidden_loss_across_tokenizers_ignores_words_the_teacher_cut_off():
    # The character-level model is the TEACHER here: it keeps fewer words than the student, and
    # its zero-padded states at the other words must not be targets.
    teacher = _classifier("tiny-bert-char", 0)
    student = _classifier("tiny-bert", 1)
    teacher_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert-char"), LABEL2ID, 20)
    student_split = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 20)
    mapping = build_mapping("last", 4, 4)
    targets = compute_teacher_targets(teacher, teacher_split, layers=(0, 1, 2, 3), word_level_hidden=True)
    objective = Objective(alpha_hard=0.0, alpha_hidden=1.0, teacher=targets, layer_mapping=mapping)
    parts = objective.losses(student, student_split.batch([0, 1, 2]), CPU)
    pairs = [(t, t) for t in range(4)]
    expected = _hidden_by_hand(student, student_split, teacher, teacher_split, pairs, None)
    assert parts["hidden"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_run_with_char_student_distils_at_word_level():
    config = _config("student={model: tiny-bert-char, init: {strategy: random}}", "distill.alpha_hidden=1.0",
                     "distill.layer_mapping.strategy=last")
    result = run_distillation(config)
    assert result.layer_mapping == (((0,), 0), ((1,), 1), ((2,), 2), ((3,), 3))
    assert result.student_tokenizer.get_vocab() != result.teacher.tokenizer.get_vocab()
    assert len(result.student_tokenizer.get_vocab()) == 5 + 2 * 68  # specials, 68 non-uppercase ASCII characters and their ##-pieces
    last = result.train_result.history[-1]
    for name in ("loss_hard", "loss_soft", "loss_hidden"):
        assert math.isfinite(last[name]) and last[name] > 0
    assert last["loss_total"] == pytest.approx(0.5 * last["loss_hard"] + 0.5 * last["loss_soft"] + last["loss_hidden"])
    assert result.summary()["student"]["init"] == "random"


def test_run_with_embedding_output_in_the_hidden_loss_and_attention_maps_of_transformer_layers_only():
    config = _config("distill.alpha_hidden=1.0", "distill.alpha_attention=0.5",
                     "distill.layer_mapping={strategy: uniform, include_embeddings: true}")
    result = run_distillation(config)
    assert result.layer_mapping[0] == ((EMBEDDINGS,), EMBEDDINGS) and len(result.layer_mapping) == 3
    last = result.train_result.history[-1]
    assert math.isfinite(last["loss_hidden"]) and last["loss_hidden"] > 0
    assert math.isfinite(last["loss_attention"]) and last["loss_attention"] > 0
    assert "map=uniform+emb" in naming.setting(config)


def test_attention_loss_across_tokenizers_is_spec_error_before_teacher(monkeypatch):
    monkeypatch.setattr(pipeline, "prepare_teacher", _no_teacher)
    config = _config("student={model: tiny-bert-char, init: {strategy: random}}", "distill.alpha_attention=1.0")
    with pytest.raises(SpecError, match=r"distill\.alpha_attention: attention-map loss needs teacher and student "
                                        r"to share a tokenizer"):
        run_distillation(config)


def _no_teacher(*args, **kwargs):
    raise AssertionError("the teacher stage must not start for an invalid config")


# --------------------------------------------------------------------------- checks before the teacher
@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["student.from_teacher.num_layers=6"], SpecError,
     r"^student\.from_teacher\.num_layers: 6 exceeds the teacher's 4 layers \(allowed 1\.\.4 with init strategy "
     r"'teacher'\)$"),
    (["distill.alpha_hidden=1", "distill.layer_mapping={strategy: explicit, pairs: [[99, 0]]}"], SpecError,
     r"^distill\.layer_mapping: teacher layer 99 is out of range; allowed 0\.\.3 \(teacher has 4 layers\)$"),
    (["student.init.layers=[0, 7]"], SpecError, r"^student\.init\.layers: \[7\] out of range"),
    (["student.from_teacher.hidden_size=16"], ModelError,
     r"^student\.from_teacher\.hidden_size: 16 differs from the teacher's 32.*shapes differ"),
    (["student={model: tiny-bert-char}"], ModelError,
     r"^student\.init\.strategy 'teacher': the student's vocab_size 141 differs from the teacher's 739"),
    (["student={model: ./nope}"], ModelError, r"^student\.model: './nope' is not a packaged alias"),
    (["teacher.model=acme/not-cached"], ModelError, r"^teacher\.model: 'acme/not-cached' .* hub is unreachable"),
])
def test_run_rejects_bad_model_settings_before_teacher_fine_tune(monkeypatch, overrides, error, message):
    monkeypatch.setattr(pipeline, "prepare_teacher", _no_teacher)
    with pytest.raises(error, match=message):
        run_distillation(_config(*overrides))


def test_run_random_init_may_be_deeper_than_teacher(monkeypatch):
    monkeypatch.setattr(pipeline, "prepare_teacher", _no_teacher)
    load_plan(_config("student.from_teacher.num_layers=6", "student.init.strategy=random"))
    with pytest.raises(AssertionError, match="teacher stage"):  # gets past the checks
        run_distillation(_config("student.from_teacher.num_layers=6", "student.init.strategy=random"))


# --------------------------------------------------------------------------- teacher cache
def test_teacher_cache_reused_on_second_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path))
    config = _config("data.synthetic={n_train: 32, n_dev: 16, n_test: 8}", "teacher.finetune.epochs=1")
    first = run_distillation(config)
    assert first.teacher.reused is False
    assert first.teacher.directory == str(tmp_path / "teachers" / first.teacher.fingerprint)
    assert (tmp_path / "teachers" / first.teacher.fingerprint / "teacher.json").is_file()

    def no_fine_tune(*args, **kwargs):
        raise AssertionError("the teacher was fine-tuned again")

    monkeypatch.setattr("distill_lab.teacher.train", no_fine_tune)
    stages = []
    second = run_distillation(config, stage=lambda name, done, total: stages.append(name))
    assert second.teacher.reused is True
    assert second.teacher.fingerprint == first.teacher.fingerprint
    assert (second.teacher.dev_f1, second.teacher.test_f1) == (first.teacher.dev_f1, first.teacher.test_f1)
    for key, value in first.teacher.model.state_dict().items():
        assert torch.equal(second.teacher.model.state_dict()[key].cpu(), value.cpu())
    assert set(stages) == {"distill"}  # no "teacher fine-tune" stage
    assert second.dev.f1 == first.dev.f1
    # another fine-tune recipe is another teacher: a cache miss
    with pytest.raises(AssertionError, match="fine-tuned again"):
        run_distillation(_config("data.synthetic={n_train: 32, n_dev: 16, n_test: 8}", "teacher.finetune.epochs=2"))


class _Waiting(logging.Handler):
    """Set when prepare_teacher says it waits for another process's fine-tune of its teacher."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "another process is fine-tuning teacher" in record.getMessage():
            self.event.set()


def _wait_for_the_lock(config: RunConfig, home, monkeypatch, publish) -> "pipeline.Teacher":
    """prepare_teacher in a thread while this test holds the teacher's lock as another process
    would; once it says it waits, `publish()` runs and the lock is released."""
    from filelock import FileLock

    from distill_lab.teacher import teacher_fingerprint

    monkeypatch.setenv("DISTILL_LAB_HOME", str(home))
    corpus = load_corpus(config.data)
    ref = models.resolve_reference(config.teacher.model)
    directory = home / "teachers" / teacher_fingerprint(config, corpus, ref)
    directory.parent.mkdir(parents=True)
    holder, waiting, result = FileLock(directory.with_name(f"{directory.name}.lock")), _Waiting(), {}
    logger = logging.getLogger("distill_lab.teacher")
    logger.addHandler(waiting)
    holder.acquire()
    try:
        thread = threading.Thread(target=lambda: result.setdefault("teacher", prepare_teacher(config, corpus, device=CPU)))
        thread.start()
        assert waiting.event.wait(timeout=120), "prepare_teacher did not wait for the lock"
        assert thread.is_alive() and "teacher" not in result
        publish(directory)
    finally:
        holder.release()
        logger.removeHandler(waiting)
    thread.join(timeout=300)
    return result["teacher"]


def test_a_teacher_another_process_is_fine_tuning_is_waited_for_and_reused(tmp_path, monkeypatch):
    config = _config("data.synthetic={n_train: 32, n_dev: 16, n_test: 8}", "teacher.finetune.epochs=1")
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path / "elsewhere"))
    theirs = prepare_teacher(config, load_corpus(config.data), device=CPU)

    def no_fine_tune(*args, **kwargs):
        raise AssertionError("the teacher was fine-tuned a second time")

    monkeypatch.setattr("distill_lab.teacher.train", no_fine_tune)
    # The other process publishes its fine-tune while this one waits: it is read, never redone.
    mine = _wait_for_the_lock(config, tmp_path / "home", monkeypatch,
                              lambda directory: shutil.copytree(theirs.directory, directory))
    assert mine.reused is True and mine.directory == str(tmp_path / "home" / "teachers" / theirs.fingerprint)
    assert (mine.dev_f1, mine.test_f1) == (theirs.dev_f1, theirs.test_f1)


def test_a_teacher_whose_other_fine_tune_died_unpublished_is_fine_tuned_by_the_waiter(tmp_path, monkeypatch):
    config = _config("data.synthetic={n_train: 32, n_dev: 16, n_test: 8}", "teacher.finetune.epochs=1")
    mine = _wait_for_the_lock(config, tmp_path, monkeypatch, lambda directory: None)
    assert mine.reused is False
    assert (tmp_path / "teachers" / mine.fingerprint / "teacher.json").is_file()


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def e2e_config() -> RunConfig:
    return _config(*E2E)


def test_end_to_end_student_learns_from_teacher(e2e_config):
    config = e2e_config
    corpus = load_corpus(config.data)
    teacher = prepare_teacher(config, corpus, device=CPU)
    assert teacher.dev_f1 > 0.5  # the teacher learned the task
    fresh, tokenizer, report = build_student(config, teacher, corpus.labels)
    assert report.strategy == "random" and models.num_layers(fresh) == 2
    dev_split = encode_sentences(corpus.dev, tokenizer, {l: i for i, l in enumerate(corpus.labels)}, 64)
    untrained, _ = evaluate(fresh, dev_split, corpus.labels)

    stages: list[tuple[str, int, int]] = []
    result = run_distillation(config, stage=lambda *args: stages.append(args))
    assert result.teacher.reused is True and result.teacher.dev_f1 == teacher.dev_f1
    assert untrained.f1 < 0.1
    assert result.dev.f1 > untrained.f1 + 0.4
    # 300 sentences / batch 16 = 19 batches per epoch, 6 epochs, dev scored every 20 steps and at the end
    assert result.train_result.steps == 114
    assert [h["step"] for h in result.train_result.history] == [20, 40, 60, 80, 100, 114]
    assert stages[-1] == ("distill", 114, 114) and len(stages) == 114
    best = max(result.train_result.history, key=lambda h: h["dev_f1"])
    assert result.train_result.best_step == best["step"]
    assert result.dev.f1 == pytest.approx(result.train_result.best_dev_f1, abs=1e-12)  # best weights kept
    # The reported dev scores and predictions are those of the weights the run returns.
    again, predictions = evaluate(result.student, dev_split, corpus.labels,
                                  batch_size=config.training.eval_batch_size)
    assert again.f1 == result.dev.f1 and predictions == result.dev_predictions
    assert result.train_result.stopped_early is False
    summary = result.summary()
    assert summary["retention"] == pytest.approx(result.dev.f1 / teacher.dev_f1)
    assert summary["compression"] == pytest.approx(result.teacher_params / result.student_params)
    assert summary["student"]["layers"] == 2 and summary["teacher"]["layers"] == 4
    assert summary["teacher"]["reused"] is True
    assert set(summary["student"]["dev_f1_per_type"]) == {"LOC", "MISC", "ORG", "PER"}


def test_on_eval_true_stops_training_early(e2e_config):
    calls: list[tuple[int, dict]] = []

    def stop(step: int, metrics: dict) -> bool:
        calls.append((step, metrics))
        return True

    result = run_distillation(e2e_config, on_eval=stop)
    assert result.train_result.stopped_early is True
    assert result.train_result.steps == 20 < 114
    assert [step for step, _ in calls] == [20]
    assert calls[0][1]["dev_f1"] == result.train_result.best_dev_f1 == pytest.approx(result.dev.f1, abs=1e-12)
    assert {"loss_total", "loss_hard", "loss_soft", "learning_rate", "epoch"} <= set(calls[0][1])
    assert result.summary()["stopped_early"] is True


def test_on_eval_false_keeps_training(e2e_config):
    seen = []
    result = run_distillation(_config(*E2E, "training.epochs=2"), on_eval=lambda step, metrics: seen.append(step))
    assert seen == [20, 38] and result.train_result.steps == 38 and not result.train_result.stopped_early


def test_eval_every_zero_scores_dev_once_after_the_last_step(e2e_config):
    seen = []
    result = run_distillation(_config(*E2E, "training.eval_every=0", "training.checkpoint=last"),
                              on_eval=lambda step, metrics: seen.append(step))
    assert seen == [114] and [h["step"] for h in result.train_result.history] == [114]
    assert result.train_result.best_step == 114 and result.dev.f1 == result.train_result.history[0]["dev_f1"]
    # The training losses are still reported: averaged over all 114 steps.
    assert result.train_result.history[0]["loss_total"] > 0


def test_nan_loss_is_trial_error():
    with pytest.raises(TrialError, match=r"^loss became (nan|inf) at step \d+ \(lower the learning rate\?\)$"):
        run_distillation(_config("training.learning_rate=1.0e30"))


def _warm_teacher(config: RunConfig) -> None:
    """Fine-tune (or load) the teacher now, so that a patched loss only reaches the student."""
    prepare_teacher(config, load_corpus(config.data), device=CPU)


def test_nan_loss_from_the_loss_function_is_trial_error(monkeypatch):
    _warm_teacher(_config())
    monkeypatch.setattr(losses, "hard_loss", lambda logits, labels, weights=None: logits.sum() * float("nan"))
    with pytest.raises(TrialError, match=r"^loss became nan at step 1 "):
        run_distillation(_config())


def test_same_seed_same_scores_other_seed_differs():
    # the trained E2E teacher copied into a 2-layer student: dev F1 ~0.74, so differences show
    setting = (*E2E, "training.epochs=1", "student.init.strategy=teacher")
    first = run_distillation(_config(*setting, "training.seed=3"))
    again = run_distillation(_config(*setting, "training.seed=3"))
    other = run_distillation(_config(*setting, "training.seed=4"))
    assert first.dev.f1 > 0.5
    assert abs(first.dev.f1 - again.dev.f1) <= 1e-9
    assert first.test.f1 == again.test.f1
    assert abs(first.dev.f1 - other.dev.f1) > 1e-9
    assert [h["loss_total"] for h in first.train_result.history] == [h["loss_total"] for h in again.train_result.history]
    for key, value in first.student.state_dict().items():
        assert torch.equal(value, again.student.state_dict()[key])
    assert [h["loss_total"] for h in first.train_result.history] != [h["loss_total"] for h in other.train_result.history]
    assert any(not torch.equal(v, other.student.state_dict()[k]) for k, v in first.student.state_dict().items())


# --------------------------------------------------------------------------- class weights
@pytest.fixture(scope="module")
def corpus() -> NerCorpus:
    return load_corpus(DataSpec(source="synthetic", synthetic=SyntheticSpec(n_train=40, n_dev=5, n_test=5)))


def test_class_weight_tensor_per_type(corpus):
    assert corpus.labels == SYNTHETIC_LABELS
    weights = class_weight_tensor({"PER": 3.0, "LOC": 0.5, "O": 0.25}, corpus)
    assert weights.tolist() == [0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0]


def test_class_weight_tensor_none_and_unknown_type(corpus):
    assert class_weight_tensor("none", corpus) is None
    with pytest.raises(SpecError, match=r"^distill\.class_weights: unknown entity type\(s\) \['FOO'\]; the data has "
                                        r"\['LOC', 'MISC', 'ORG', 'PER'\] \(and O\)$"):
        class_weight_tensor({"PER": 2.0, "FOO": 1.0}, corpus)


def test_class_weight_tensor_inverse_frequency(corpus):
    counts = torch.ones(len(SYNTHETIC_LABELS))
    for sentence in corpus.train:
        for tag in sentence.tags:
            counts[SYNTHETIC_LABELS.index(tag)] += 1
    weights = class_weight_tensor("inverse_frequency", corpus)
    assert weights[0].item() == 1.0
    assert torch.allclose(weights, counts[0] / counts)
    assert weights[SYNTHETIC_LABELS.index("B-PER")] > 1.0


def test_class_weights_reach_the_hard_loss(monkeypatch):
    _warm_teacher(_config())
    seen = []
    original = losses.hard_loss
    monkeypatch.setattr(losses, "hard_loss", lambda logits, labels, weights=None: seen.append(weights) or original(
        logits, labels, weights))
    run_distillation(_config("distill.class_weights={PER: 2.0}"))
    assert seen and all(w.tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 2] for w in seen)


# --------------------------------------------------------------------------- hidden-state losses
@pytest.mark.parametrize(("mapping", "described"), [
    ("{strategy: uniform}", "0->0 3->1"),
    ("{strategy: last}", "2->0 3->1"),
    ("{strategy: skip}", "1->0 3->1"),
    ("{strategy: many_to_one}", "0+1->0 2+3->1"),
    ("{strategy: many_to_one, groups: [[0], [1, 2, 3]]}", "0->0 1+2+3->1"),
    ("{strategy: explicit, pairs: [[1, 0], [2, 1], [3, 1]]}", "1->0 2+3->1"),
])
def test_hidden_loss_with_each_mapping_strategy(mapping, described):
    result = run_distillation(_config("distill.alpha_hidden=1.0", f"distill.layer_mapping={mapping}"))
    assert result.summary()["distill"]["layer_mapping"] == described
    last = result.train_result.history[-1]
    assert math.isfinite(last["loss_hidden"]) and last["loss_hidden"] > 0


def test_hidden_loss_off_means_no_mapping():
    result = run_distillation(_config())
    assert result.layer_mapping == () and result.summary()["distill"]["layer_mapping"] is None
    assert result.train_result.history[-1]["loss_hidden"] == 0.0


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("direction", ["student_to_teacher", "teacher_to_student"])
def test_projections_for_a_narrower_student(monkeypatch, kind, direction):
    built = []
    original = pipeline.build_projections

    def capture(*args, **kwargs):
        projections = original(*args, **kwargs)
        built.append((projections, {k: v.detach().clone() for k, v in projections.state_dict().items()}))
        return projections

    monkeypatch.setattr(pipeline, "build_projections", capture)
    result = run_distillation(_config(
        "student.from_teacher={num_layers: 2, hidden_size: 16}", "student.init.strategy=random",
        "distill.alpha_hidden=1.0", "distill.hidden_loss=cosine",
        f"distill.projection={{kind: {kind}, direction: {direction}, kernel_size: 3}}"))
    assert models.hidden_width(result.student) == 16
    (projections, initial), = built
    assert sorted(projections.keys()) == ["0", "1"]
    in_dim, out_dim = (16, 32) if direction == "student_to_teacher" else (32, 16)
    for projection in projections.values():
        assert (projection.in_dim, projection.out_dim, projection.kind) == (in_dim, out_dim, kind)
        assert projection.kernel_size == (3 if kind == "conv1d" else 1)
    # trained jointly with the student
    assert any(not torch.equal(v, initial[k]) for k, v in projections.state_dict().items())
    last = result.train_result.history[-1]
    assert math.isfinite(last["loss_hidden"]) and 0 < last["loss_hidden"] <= 2  # cosine loss range


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-roberta", "tiny-electra", "tiny-deberta"])
def test_hidden_and_attention_losses_for_every_family(family):
    result = run_distillation(_config(f"teacher.model={family}", "distill.alpha_hidden=1.0",
                                      "distill.alpha_attention=1.0", "distill.layer_mapping.strategy=many_to_one"))
    assert result.teacher.ref.reference == family
    assert result.summary()["distill"]["layer_mapping"] == "0+1->0 2+3->1"
    assert result.summary()["student"]["init_layers"] == [0, 3]
    last = result.train_result.history[-1]
    for name in ("loss_hard", "loss_soft", "loss_hidden", "loss_attention"):
        assert math.isfinite(last[name]) and last[name] > 0, name
    assert last["loss_total"] == pytest.approx(
        0.5 * last["loss_hard"] + 0.5 * last["loss_soft"] + last["loss_hidden"] + last["loss_attention"])


def test_train_on_an_empty_split_is_trial_error():
    from distill_lab.data.align import EncodedSplit
    from distill_lab.distill.engine import TrainRecipe, train

    model = _classifier("tiny-bert", 0)
    empty = EncodedSplit([], [], 0)
    with pytest.raises(TrialError, match="the training split has no sentences"):
        train(model, empty, empty, HAND_LABELS, TrainRecipe(epochs=1, learning_rate=1e-3, batch_size=4), Objective())


def test_fused_adamw_takes_the_steps_of_the_per_parameter_loop():
    from distill_lab.distill.engine import TrainRecipe, adamw_kernel, train

    split = encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 32)
    trained = {}
    for fused in (True, False):
        model = _classifier("tiny-bert", 0)
        # Three optimizer steps: further on, rounding differences grow chaotically at this learning rate.
        recipe = TrainRecipe(epochs=3, learning_rate=1e-2, batch_size=3, seed=0, eval_every=10 ** 6,
                             warmup_ratio=0.0, fused_optimizer=fused)
        train(model, split, split, HAND_LABELS, recipe, Objective())
        trained[fused] = {name: value.detach().clone() for name, value in model.state_dict().items()}
    initial = _classifier("tiny-bert", 0).state_dict()
    for name, value in trained[False].items():
        if name.endswith("attention.self.key.bias"):  # softmax ignores it: its gradient is rounding noise,
            continue                                  # which Adam scales up to full-size steps
        assert torch.allclose(trained[True][name], value, rtol=1e-4, atol=1e-6), name
    assert any(not torch.equal(trained[True][name], initial[name]) for name in initial)  # it did train
    assert adamw_kernel([torch.zeros(1)], torch.device("cpu"), True) == {"fused": True}
    assert adamw_kernel([torch.zeros(1)], torch.device("cpu"), False) == {}
    assert adamw_kernel([torch.zeros(1, dtype=torch.long)], torch.device("cpu"), True) == {}


def test_teacher_fingerprint_of_tiny_model_follows_its_tokenizer(tmp_path):
    import shutil

    from distill_lab.teacher import teacher_fingerprint

    config = _config()
    corpus = load_corpus(config.data)
    ref = models.resolve_reference("tiny-bert")
    copy_dir = tmp_path / "tiny-bert"
    shutil.copytree(ref.location, copy_dir)
    same = models.ModelRef("tiny-bert", str(copy_dir), "tiny", "Tiny-Bert")
    assert teacher_fingerprint(config, corpus, same) == teacher_fingerprint(config, corpus, ref)
    (copy_dir / "tokenizer.json").write_text((copy_dir / "tokenizer.json").read_text().replace('"mary"', '"marie"'))
    assert teacher_fingerprint(config, corpus, same) != teacher_fingerprint(config, corpus, ref)
    # other recipes, data or max_length are other teachers as well
    assert teacher_fingerprint(_config("teacher.finetune.seed=1"), corpus, ref) != teacher_fingerprint(config, corpus, ref)
    assert teacher_fingerprint(_config("data.max_length=40"), corpus, ref) != teacher_fingerprint(config, corpus, ref)
    # ... but the student side is not part of the teacher
    assert teacher_fingerprint(_config("training.seed=9", "distill.temperature=5"), corpus, ref) == \
        teacher_fingerprint(config, corpus, ref)


def test_checkpoint_teachers_do_not_share_cached_outputs(tmp_path):
    from distill_lab.distill.teacher_cache import clear_memory

    directories = []
    for seed in (0, 1):  # two different "fine-tuned" checkpoints with the data's labels
        torch.manual_seed(seed)
        model = models.token_classifier_from_backbone(models.resolve_reference("tiny-bert"), SYNTHETIC_LABELS)
        directories.append(tmp_path / f"ckpt{seed}")
        model.save_pretrained(directories[-1])

    def run(directory):
        return run_distillation(_config(f"teacher={{model: tiny-bert, checkpoint: {directory}}}"))

    clear_memory()
    alone = run(directories[1])
    clear_memory()
    first = run(directories[0])
    after = run(directories[1])  # must not get the first checkpoint's cached logits
    assert first.teacher.fingerprint != after.teacher.fingerprint
    assert after.teacher.fingerprint == alone.teacher.fingerprint
    assert after.teacher.fingerprint.startswith("checkpoint-") and after.teacher.reused is True
    assert [h["loss_soft"] for h in after.train_result.history] == [h["loss_soft"] for h in alone.train_result.history]
    assert [h["loss_soft"] for h in first.train_result.history] != [h["loss_soft"] for h in alone.train_result.history]
