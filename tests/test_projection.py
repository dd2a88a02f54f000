from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_lab.distill.losses import hidden_loss
from distill_lab.distill.mapping import build_mapping
from distill_lab.distill.projection import Projection, build_projections, project_pair
from distill_lab.errors import SpecError


def _mask(batch: int, length: int) -> torch.Tensor:
    return torch.ones(batch, length, dtype=torch.bool)


# ----------------------------------------------------------------------------- Projection


def test_projection_linear_shape_and_exact_values():
    p = Projection(2, 3, "linear")
    assert isinstance(p.proj, nn.Linear)
    with torch.no_grad():
        p.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        p.proj.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    y = p(x)
    assert y.shape == (1, 2, 3)
    assert y.tolist() == [[[1.0, 2.0, 13.0], [3.0, 4.0, 17.0]]]


def test_projection_conv1d_mixes_neighbours_along_sequence():
    p = Projection(1, 1, "conv1d", kernel_size=3)
    assert isinstance(p.proj, nn.Conv1d)
    assert p.proj.padding == (1,)
    with torch.no_grad():
        p.proj.weight.fill_(1.0)  # sum of the 3-word window
        p.proj.bias.zero_()
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])  # (batch 1, length 4, width 1)
    y = p(x)
    # zero padding at both ends: [0+1+2, 1+2+3, 2+3+4, 3+4+0]
    assert y.shape == (1, 4, 1)
    assert y.squeeze().tolist() == [3.0, 6.0, 9.0, 7.0]


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_projection_conv1d_keeps_length(kernel_size):
    p = Projection(8, 16, "conv1d", kernel_size=kernel_size)
    assert p(torch.randn(2, 7, 8)).shape == (2, 7, 16)


@pytest.mark.parametrize("kernel_size", [2, 4, 0, -1])
def test_projection_rejects_even_or_non_positive_kernel(kernel_size):
    with pytest.raises(SpecError, match=rf"kernel_size must be a positive odd int .* got {kernel_size}"):
        Projection(4, 8, "conv1d", kernel_size=kernel_size)


def test_projection_rejects_unknown_kind_listing_valid():
    with pytest.raises(SpecError, match=r"projection kind 'mlp' is not valid; valid kinds: conv1d, linear"):
        Projection(4, 8, "mlp")


def test_projection_rejects_bad_width_and_bad_input():
    with pytest.raises(SpecError, match=r"in_dim must be a positive int, got 0"):
        Projection(0, 8)
    with pytest.raises(ValueError, match=r"expects \(batch, length, 4\), got \(1, 2, 5\)"):
        Projection(4, 8)(torch.zeros(1, 2, 5))


def test_projection_linear_ignores_kernel_size():
    p = Projection(4, 8, "linear", kernel_size=3)
    assert isinstance(p.proj, nn.Linear)
    assert p.kernel_size == 1


# ----------------------------------------------------------------------------- build_projections


def test_build_projections_student_to_teacher_one_per_student_layer():
    mapping = build_mapping("uniform", 12, 4)
    projs = build_projections(mapping, 4, 8, "linear", "student_to_teacher", 1)
    assert isinstance(projs, nn.ModuleDict)
    assert list(projs.keys()) == ["0", "1", "2", "3"]
    for p in projs.values():
        assert (p.in_dim, p.out_dim, p.kind) == (4, 8, "linear")
        assert p.proj.weight.shape == (8, 4)


def test_build_projections_teacher_to_student_conv1d():
    mapping = build_mapping("explicit", 12, 4, pairs=[[0, 0], [1, 0], [11, 3]])
    projs = build_projections(mapping, 4, 8, "conv1d", "teacher_to_student", 3)
    assert list(projs.keys()) == ["0", "3"]
    for p in projs.values():
        assert (p.in_dim, p.out_dim, p.kind, p.kernel_size) == (8, 4, "conv1d", 3)
        assert p.proj.weight.shape == (4, 8, 3)


def test_build_projections_equal_widths_is_none():
    mapping = build_mapping("uniform", 12, 4)
    assert build_projections(mapping, 8, 8, "linear", "student_to_teacher", 1) is None
    assert build_projections(mapping, 8, 8, "conv1d", "teacher_to_student", 3) is None


def test_build_projections_validates_even_with_equal_widths():
    mapping = build_mapping("uniform", 12, 4)
    with pytest.raises(SpecError, match=r"direction 'sideways' is not valid; valid directions: student_to_teacher, teacher_to_student"):
        build_projections(mapping, 8, 8, "linear", "sideways", 1)
    with pytest.raises(SpecError, match=r"kernel_size must be a positive odd int"):
        build_projections(mapping, 8, 8, "conv1d", "student_to_teacher", 2)
    with pytest.raises(SpecError, match=r"valid kinds: conv1d, linear"):
        build_projections(mapping, 8, 8, "mlp", "student_to_teacher", 1)


# ----------------------------------------------------------------------------- project_pair


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_project_pair_student_to_teacher_shapes_and_gradients(kind):
    torch.manual_seed(0)
    mapping = build_mapping("uniform", 12, 4)
    projs = build_projections(mapping, 4, 8, kind, "student_to_teacher", 3)
    student = torch.randn(2, 5, 4, requires_grad=True)
    teacher = torch.randn(2, 5, 8)
    s, t = project_pair(projs, "student_to_teacher", 1, student, teacher)
    assert s.shape == (2, 5, 8) and t.shape == (2, 5, 8)
    assert torch.equal(t, teacher)  # teacher side untouched
    hidden_loss(s, t, _mask(2, 5)).backward()
    assert student.grad is not None and student.grad.abs().sum().item() > 0
    used = projs["1"].proj.weight.grad
    assert used is not None and used.abs().sum().item() > 0
    # only the projection of the requested student layer is used
    assert projs["0"].proj.weight.grad is None


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_project_pair_teacher_to_student_shapes_and_gradients(kind):
    torch.manual_seed(0)
    mapping = build_mapping("uniform", 12, 4)
    projs = build_projections(mapping, 4, 8, kind, "teacher_to_student", 3)
    student = torch.randn(2, 5, 4, requires_grad=True)
    teacher = torch.randn(2, 5, 8)
    s, t = project_pair(projs, "teacher_to_student", 3, student, teacher)
    assert s.shape == (2, 5, 4) and t.shape == (2, 5, 4)
    assert s is student  # student side untouched
    hidden_loss(s, t, _mask(2, 5)).backward()
    assert student.grad.abs().sum().item() > 0
    assert projs["3"].proj.weight.grad.abs().sum().item() > 0


def test_project_pair_casts_fp16_teacher_to_student_dtype():
    projs = build_projections(build_mapping("last", 2, 1), 2, 3, "linear", "teacher_to_student", 1)
    student = torch.zeros(1, 2, 2)
    teacher16 = torch.ones(1, 2, 3, dtype=torch.float16)
    s, t = project_pair(projs, "teacher_to_student", 0, student, teacher16)
    assert t.dtype == torch.float32 and t.shape == (1, 2, 2)
    s, t = project_pair(None, "student_to_teacher", 0, torch.zeros(1, 2, 3), teacher16)
    assert t.dtype == torch.float32
    assert t.tolist() == [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]


def test_project_pair_identity_when_none():
    student = torch.randn(1, 3, 4)
    teacher = torch.randn(1, 3, 4)
    s, t = project_pair(None, "student_to_teacher", 0, student, teacher)
    assert s is student and torch.equal(t, teacher)


def test_project_pair_rejections():
    with pytest.raises(ValueError, match=r"no projections but shapes differ"):
        project_pair(None, "student_to_teacher", 0, torch.zeros(1, 3, 4), torch.zeros(1, 3, 8))
    projs = build_projections(build_mapping("uniform", 12, 4), 4, 8, "linear", "student_to_teacher", 1)
    with pytest.raises(ValueError, match=r"no projection for student layer 7; have \['0', '1', '2', '3'\]"):
        project_pair(projs, "student_to_teacher", 7, torch.zeros(1, 3, 4), torch.zeros(1, 3, 8))
    with pytest.raises(SpecError, match=r"direction 'up' is not valid"):
        project_pair(projs, "up", 0, torch.zeros(1, 3, 4), torch.zeros(1, 3, 8))
    # projections built for the other direction: widths don't line up
    with pytest.raises(ValueError, match=r"expects \(batch, length, 4\), got \(1, 3, 8\)"):
        project_pair(projs, "teacher_to_student", 0, torch.zeros(1, 3, 4), torch.zeros(1, 3, 8))


def test_arms_that_differ_only_in_their_projection_get_their_own_setting():
    from distill_lab.naming import setting
    from distill_lab.spec import parse_spec, resolve

    raw = {"name": "p", "student": {"from_teacher": {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2}},
           "distill": {"temperature": 8.0, "alpha_hard": 0.2, "alpha_soft": 0.8, "alpha_hidden": 1.0}}
    spec = parse_spec(raw, source="test")
    names = [setting(resolve(spec, {"distill.projection": projection})) for projection in (
        {"kind": "linear"}, {"kind": "conv1d", "kernel_size": 3},
        {"kind": "linear", "direction": "teacher_to_student"})]
    assert names == ["T=8 a=0.2/0.8/1 map=uniform proj=linear", "T=8 a=0.2/0.8/1 map=uniform proj=conv1d3",
                     "T=8 a=0.2/0.8/1 map=uniform proj=linear t>s"]
    # No hidden loss, or a student of the teacher's width: no projection, nothing added.
    assert setting(resolve(spec, {"distill.alpha_hidden": 0.0})) == "T=8 a=0.2/0.8/0"
    assert setting(resolve(spec, {"student.from_teacher.hidden_size": None})) == "T=8 a=0.2/0.8/1 map=uniform"


def test_a_narrow_student_says_its_width_in_its_name():
    from distill_lab.naming import student_model_name
    from distill_lab.spec import parse_spec, resolve

    spec = parse_spec({"name": "p", "student": {"from_teacher": {"num_layers": 3, "hidden_size": 256,
                                                                  "num_attention_heads": 4}}}, source="test")
    assert student_model_name(resolve(spec), "MiniLM-L6", 3) == "MiniLM (3 layers, 256 wide)"
    full_width = resolve(spec, {"student.from_teacher.hidden_size": None})
    assert student_model_name(full_width, "MiniLM-L6", 3) == "MiniLM (3 layers)"
