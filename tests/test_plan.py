"""`plan_run` is pure: model configs in, the run's layer counts, init layers and mapping out."""

from __future__ import annotations

import pytest
from transformers import BertConfig, RobertaConfig

from distill_lab.distill.mapping import EMBEDDINGS
from distill_lab.errors import ModelError, SpecError
from distill_lab.plan import load_plan, plan_run
from distill_lab.spec import parse_spec, resolve
from tiny_specs import TINY_RUN

TEACHER = BertConfig(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     vocab_size=500, max_position_embeddings=64)


def _config(*overrides: str):
    return resolve(parse_spec(TINY_RUN, list(overrides), source="test"))


def test_a_teacher_cut_gets_the_init_layers_and_mapping_it_asks_for():
    plan = plan_run(_config("student.from_teacher.num_layers=3", "student.init.layers=first",
                            "distill.alpha_hidden=1.0", "distill.layer_mapping={strategy: uniform, include_embeddings: true}"),
                    TEACHER)
    assert (plan.n_teacher, plan.n_student) == (6, 3)
    assert plan.init_layers == (0, 1, 2)
    assert plan.mapping[0] == ((EMBEDDINGS,), EMBEDDINGS) and len(plan.mapping) == 4
    assert plan.hidden_layers and plan.attention_mapping == ()
    assert plan.needs_teacher and plan.same_tokenizer and not plan.token_logits


def test_uniform_init_keeps_head_and_tail_and_no_kd_needs_no_teacher_outputs():
    plan = plan_run(_config("student.from_teacher.num_layers=3", "distill.alpha_soft=0", "distill.alpha_hard=1"),
                    TEACHER)
    assert plan.init_layers[0] == 0 and plan.init_layers[-1] == 5
    assert plan.mapping == () and plan.needs_teacher is False


@pytest.mark.parametrize(("overrides", "kwargs", "error", "message"), [
    (["student.from_teacher.num_layers=7"], {}, SpecError, r"num_layers: 7 exceeds the teacher's 6 layers"),
    (["student.from_teacher={num_layers: 2, hidden_size: 32, num_attention_heads: 4}"], {}, ModelError,
     r"hidden_size: 32 differs from the teacher's 64"),
    (["data.max_length=80"], {}, SpecError, r"max_length: 80 exceeds the teacher's 64 positions"),
    (["distill.soft_positions=all_subtokens"], {"same_tokenizer": False}, SpecError,
     r"all_subtokens .* needs teacher and student to share a tokenizer"),
    (["student.init.layers=[0, 9]"], {}, SpecError, r"\[9\] out of range"),
])
def test_bad_shapes_are_one_error_naming_the_field(overrides, kwargs, error, message):
    with pytest.raises(error, match=message):
        plan_run(_config(*overrides), TEACHER, **kwargs)


def test_a_student_with_its_own_config_is_planned_from_it():
    student = RobertaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                            vocab_size=500, max_position_embeddings=66)
    plan = plan_run(_config("student={model: tiny-roberta, init: {strategy: random}}"), TEACHER,
                    student_config=student, same_tokenizer=False)
    assert (plan.n_teacher, plan.n_student, plan.init_layers) == (6, 4, ())
    with pytest.raises(ModelError, match="the student's vocab_size 501 differs from the teacher's 500"):
        plan_run(_config("student={model: tiny-roberta, init: {strategy: teacher}}"), TEACHER,
                 student_config=RobertaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                              num_attention_heads=4, vocab_size=501))


def test_load_plan_reads_the_packaged_configs():
    plan = load_plan(_config())
    assert plan.n_teacher >= 2 and plan.n_student == 2 and plan.same_tokenizer
