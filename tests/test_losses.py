"""Golden values for the distillation losses, computed by hand with math.exp/math.log.

Nothing here calls torch's own KL/cross-entropy to produce an expected value; the one
F.cross_entropy call is an extra consistency check next to a hand-computed golden value.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_lab.distill.losses import (
    HIDDEN_LOSSES,
    attention_loss,
    hard_loss,
    hidden_cosine,
    hidden_loss,
    hidden_mse,
    soft_loss,
)

TOL = 1e-6


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    # KL(p || q) = sum_c p_c * ln(p_c / q_c)
    return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))


# ----------------------------------------------------------------------------- hard_loss


def _hard_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # batch 0: word0 logits [1, 0] gold 0; word1 is padding (-100) with wild logits.
    # batch 1: word0 logits [0, 2] gold 1; word1 logits [0, 0] gold 0.
    logits = torch.tensor(
        [[[1.0, 0.0], [1e4, -1e4]], [[0.0, 2.0], [0.0, 0.0]]], requires_grad=True
    )
    labels = torch.tensor([[0, -100], [1, 0]])
    return logits, labels


# ce([1,0], 0) = -ln(e/(e+1)) = ln(1 + e^-1)
CE_A = math.log(1 + math.exp(-1))
# ce([0,2], 1) = -ln(e^2/(1+e^2)) = ln(1 + e^-2)
CE_B = math.log(1 + math.exp(-2))
# ce([0,0], 0) = ln 2
CE_C = math.log(2)


def test_hard_loss_mean_over_valid_positions_not_per_sequence():
    logits, labels = _hard_batch()
    loss = hard_loss(logits, labels)
    # 3 valid positions in total: (0.313262 + 0.126928 + 0.693147) / 3 = 0.377779
    expected = (CE_A + CE_B + CE_C) / 3
    assert loss.item() == pytest.approx(expected, abs=TOL)
    assert expected == pytest.approx(0.377779, abs=1e-6)
    # the per-sequence mean-of-means would be different: guard against that reduction
    assert loss.item() != pytest.approx((CE_A + (CE_B + CE_C) / 2) / 2, abs=1e-3)


def test_hard_loss_ignored_position_values_change_nothing():
    logits, labels = _hard_batch()
    wild = logits.detach().clone()
    wild[0, 1] = torch.tensor([float("nan"), float("inf")])
    wild.requires_grad_(True)
    loss = hard_loss(wild, labels)
    assert loss.item() == pytest.approx((CE_A + CE_B + CE_C) / 3, abs=TOL)
    loss.backward()
    assert torch.equal(wild.grad[0, 1], torch.zeros(2))


def test_hard_loss_class_weights_weighted_mean():
    logits, labels = _hard_batch()
    w = torch.tensor([1.0, 3.0])
    loss = hard_loss(logits, labels, class_weights=w)
    # gold classes 0, 1, 0 -> weights 1, 3, 1: (1*CE_A + 3*CE_B + 1*CE_C) / (1 + 3 + 1)
    #   = (0.313262 + 0.380784 + 0.693147) / 5 = 0.277439
    expected = (CE_A + 3 * CE_B + CE_C) / 5
    assert loss.item() == pytest.approx(expected, abs=TOL)
    assert expected == pytest.approx(0.277439, abs=1e-6)
    # consistency with torch's documented weighted mean
    torch_value = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), weight=w, ignore_index=-100)
    assert loss.item() == pytest.approx(torch_value.item(), abs=TOL)


def test_hard_loss_gradient_is_softmax_minus_onehot_over_n():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[0, -100]])
    hard_loss(logits, labels).backward()
    # d ce / d z = softmax(z) - onehot(y); one valid position so no division
    p0 = math.exp(1) / (math.exp(1) + 1)
    assert logits.grad[0, 0, 0].item() == pytest.approx(p0 - 1, abs=TOL)
    assert logits.grad[0, 0, 1].item() == pytest.approx(1 - p0, abs=TOL)
    assert logits.grad[0, 1].abs().sum().item() == 0.0


def test_hard_loss_no_valid_position_is_zero_with_grad():
    logits = torch.tensor([[[float("nan"), 1.0], [2.0, 3.0]]], requires_grad=True)
    labels = torch.full((1, 2), -100)
    loss = hard_loss(logits, labels)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(1, 2, 2))


def test_hard_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels shape"):
        hard_loss(torch.zeros(1, 3, 2), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        hard_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.long), torch.ones(3))


# ----------------------------------------------------------------------------- soft_loss

# word 0: student [0, 0], teacher [ln 3, 0]  -> at T=1 p_t = [3/4, 1/4], p_s = [1/2, 1/2]
# word 1: student [1, -1], teacher [0, 0]    -> at T=1 p_t = [1/2, 1/2], p_s = softmax([1, -1])
STUDENT = [[0.0, 0.0], [1.0, -1.0]]
TEACHER = [[math.log(3), 0.0], [0.0, 0.0]]


def _soft_expected(temperature: float) -> float:
    kls = [
        _kl(_softmax([t / temperature for t in tw]), _softmax([s / temperature for s in sw]))
        for sw, tw in zip(STUDENT, TEACHER)
    ]
    return temperature**2 * sum(kls) / len(kls)


def _soft_tensors(extra_student=None, extra_teacher=None):
    s = [list(r) for r in STUDENT]
    t = [list(r) for r in TEACHER]
    mask = [True, True]
    if extra_student is not None:
        s.append(extra_student)
        t.append(extra_teacher)
        mask.append(False)
    return (
        torch.tensor([s], requires_grad=True),
        torch.tensor([t]),
        torch.tensor([mask]),
    )


def test_soft_loss_t1_hand_value():
    s, t, m = _soft_tensors()
    # word 0: 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # word 1: p_s = [e/(e+1/e), (1/e)/(e+1/e)] = [0.880797, 0.119203]
    ps1 = math.exp(1) / (math.exp(1) + math.exp(-1))
    kl1 = 0.5 * math.log(0.5 / ps1) + 0.5 * math.log(0.5 / (1 - ps1))
    expected = (kl0 + kl1) / 2
    assert kl0 == pytest.approx(0.130812, abs=1e-6)
    assert expected == pytest.approx(_soft_expected(1.0), abs=1e-12)
    assert soft_loss(s, t, m, 1.0).item() == pytest.approx(expected, abs=TOL)


def test_soft_loss_t2_includes_t_squared_factor():
    s, t, m = _soft_tensors()
    # T=2: word 0 teacher [ln3/2, 0] -> p_t = [sqrt3/(sqrt3+1), 1/(sqrt3+1)], student uniform;
    #      word 1 student [1/2, -1/2] -> p_s = [e^.5/(e^.5+e^-.5), ...], teacher uniform.
    r3 = math.sqrt(3)
    pt0 = [r3 / (r3 + 1), 1 / (r3 + 1)]
    kl0 = pt0[0] * math.log(pt0[0] / 0.5) + pt0[1] * math.log(pt0[1] / 0.5)
    ps1 = math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5))
    kl1 = 0.5 * math.log(0.5 / ps1) + 0.5 * math.log(0.5 / (1 - ps1))
    expected_t2 = 4 * (kl0 + kl1) / 2
    assert expected_t2 == pytest.approx(_soft_expected(2.0), abs=1e-12)
    loss_t1 = soft_loss(s, t, m, 1.0).item()
    loss_t2 = soft_loss(s, t, m, 2.0).item()
    assert loss_t2 == pytest.approx(expected_t2, abs=TOL)
    # same logits, T=2 vs T=1: the ratio is the hand-computed one (not 1, not 1/4)
    ratio = expected_t2 / _soft_expected(1.0)
    assert loss_t2 / loss_t1 == pytest.approx(ratio, rel=1e-5)
    # T=1: 0.282296, T=2: 0.312911 -> ratio 1.108447
    assert ratio == pytest.approx(1.108447, abs=1e-6)


def test_soft_loss_gradient_is_t_times_prob_difference():
    # d/ds [T^2 KL(p_t || softmax(s/T))] = T * (p_s - p_t), divided by n_valid = 2
    s, t, m = _soft_tensors()
    soft_loss(s, t, m, 2.0).backward()
    r3 = math.sqrt(3)
    pt0 = r3 / (r3 + 1)
    assert s.grad[0, 0, 0].item() == pytest.approx(2 * (0.5 - pt0) / 2, abs=TOL)
    ps1 = math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5))
    assert s.grad[0, 1, 0].item() == pytest.approx(2 * (ps1 - 0.5) / 2, abs=TOL)


def test_soft_loss_masked_wild_values_change_nothing():
    reference = _soft_expected(2.0)
    for student_row, teacher_row in (
        ([1e4, -1e4], [-1e4, 1e4]),
        ([float("nan"), 0.0], [float("inf"), float("-inf")]),
    ):
        s, t, m = _soft_tensors(student_row, teacher_row)
        loss = soft_loss(s, t, m, 2.0)
        assert loss.item() == pytest.approx(reference, abs=TOL)
        loss.backward()
        assert torch.equal(s.grad[0, 2], torch.zeros(2))
        assert torch.isfinite(s.grad).all()


def test_soft_loss_accepts_int_mask_as_boolean():
    s, t, _ = _soft_tensors([5.0, -5.0], [-5.0, 5.0])
    loss = soft_loss(s, t, torch.tensor([[1, 1, 0]]), 1.0)
    assert loss.item() == pytest.approx(_soft_expected(1.0), abs=TOL)


def test_soft_loss_fp16_teacher_is_cast_to_student_dtype():
    # teacher [1, 0] is exact in fp16; student uniform.
    # p_t = [e/(e+1), 1/(e+1)] = [0.731059, 0.268941]; KL vs [1/2, 1/2]
    #   = 0.731059 ln(1.462117) + 0.268941 ln(0.537883) = 0.277718 - 0.166773 = 0.110944
    student = torch.zeros(1, 1, 2, requires_grad=True)
    teacher16 = torch.tensor([[[1.0, 0.0]]], dtype=torch.float16)
    mask = torch.ones(1, 1, dtype=torch.bool)
    p = math.exp(1) / (math.exp(1) + 1)
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    loss = soft_loss(student, teacher16, mask, 1.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, abs=TOL)
    assert expected == pytest.approx(0.110944, abs=1e-6)
    assert loss.item() == soft_loss(student, teacher16.float(), mask, 1.0).item()


def test_soft_loss_identical_distributions_is_zero():
    x = torch.tensor([[[2.0, -1.0, 0.5]]])
    assert soft_loss(x, x.clone(), torch.ones(1, 1, dtype=torch.bool), 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_loss_empty_mask_is_zero_with_grad():
    s, t, _ = _soft_tensors()
    loss = soft_loss(s, t, torch.zeros(1, 2, dtype=torch.bool), 2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros(1, 2, 2))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_soft_loss_rejects_non_positive_temperature(temperature):
    s, t, m = _soft_tensors()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_loss(s, t, m, temperature)


def test_soft_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="teacher_logits shape"):
        soft_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="mask shape"):
        soft_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 3, dtype=torch.bool), 1.0)


# ----------------------------------------------------------------------------- hidden_loss


def _hidden_pair():
    # 2 valid positions x 2 dims, plus a masked third position with wild values
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, float("nan")]]], requires_grad=True)
    t = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [-1e6, float("inf")]]])
    m = torch.tensor([[True, True, False]])
    return s, t, m


def test_hidden_loss_mse_hand_value_and_masking():
    s, t, m = _hidden_pair()
    # diffs 0, 2, 3, 0 -> squares 0, 4, 9, 0 -> mean over 2 positions x 2 dims = 13/4
    loss = hidden_loss(s, t, m, "mse")
    assert loss.item() == pytest.approx(13 / 4, abs=TOL)
    loss.backward()
    # d/ds mean((s-t)^2) = 2 (s - t) / 4
    assert s.grad[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=TOL)
    assert s.grad[0, 1].tolist() == pytest.approx([1.5, 0.0], abs=TOL)
    assert torch.equal(s.grad[0, 2], torch.zeros(2))


def test_hidden_loss_cosine_hand_value():
    # pos 0: s=[1,0], t=[1,1] -> cos = 1/sqrt2 -> 1 - 0.707107 = 0.292893
    # pos 1: s=[0,2], t=[0,-3] -> cos = -1 -> 2
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, -3.0], [-5.0, 1e6]]])
    m = torch.tensor([[True, True, False]])
    expected = ((1 - 1 / math.sqrt(2)) + 2) / 2
    assert hidden_loss(s, t, m, "cosine").item() == pytest.approx(expected, abs=TOL)
    assert expected == pytest.approx(1.146447, abs=1e-6)


def test_hidden_loss_cosine_ignores_scale():
    s = torch.tensor([[[1.0, 2.0]]])
    m = torch.ones(1, 1, dtype=torch.bool)
    assert hidden_loss(s, 7.0 * s, m, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    # while MSE does not: (1-7)^2 + (2-14)^2 = 36 + 144 -> / 2 = 90
    assert hidden_loss(s, 7.0 * s, m, "mse").item() == pytest.approx(90.0, abs=1e-4)


def test_hidden_loss_fp16_teacher():
    s = torch.tensor([[[1.0, 2.0]]])
    t16 = torch.tensor([[[0.5, 4.0]]], dtype=torch.float16)
    # (0.5^2 + 2^2) / 2 = 2.125
    loss = hidden_loss(s, t16, torch.ones(1, 1, dtype=torch.bool))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(2.125, abs=TOL)


def test_hidden_loss_registry_and_default():
    assert set(HIDDEN_LOSSES) == {"mse", "cosine"}
    assert HIDDEN_LOSSES["mse"] is hidden_mse
    assert HIDDEN_LOSSES["cosine"] is hidden_cosine
    s, t, m = _hidden_pair()
    assert hidden_loss(s, t, m).item() == pytest.approx(13 / 4, abs=TOL)


def test_hidden_loss_unknown_kind_lists_valid():
    s, t, m = _hidden_pair()
    with pytest.raises(ValueError, match=r"unknown kind 'l1'; valid kinds: cosine, mse"):
        hidden_loss(s, t, m, "l1")


def test_hidden_loss_empty_mask_and_shape_mismatch():
    s, t, _ = _hidden_pair()
    loss = hidden_loss(s, t, torch.zeros(1, 3, dtype=torch.bool), "cosine")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="teacher_hidden shape"):
        hidden_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- attention_loss


def test_attention_loss_all_valid_hand_value():
    # 1 head, 2x2 map; diffs [[1, 0], [0, 2]] -> (1 + 0 + 0 + 4) / 4 = 1.25
    s = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]]]])
    t = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
    assert attention_loss(s, t, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(1.25, abs=TOL)


def test_attention_loss_only_query_and_key_both_valid():
    # 2 heads, length 2, position 1 is padding: only entry (q=0, k=0) counts per head.
    # head 0 diff 1, head 1 diff 3 -> (1 + 9) / 2 = 5; every other entry is wild.
    s = torch.tensor([[[[1.0, 1e4], [-1e4, 7.0]], [[3.0, float("nan")], [float("-inf"), 2.0]]]], requires_grad=True)
    t = torch.tensor([[[[0.0, -1e4], [1e4, -7.0]], [[0.0, 1.0], [1.0, float("inf")]]]])
    m = torch.tensor([[True, False]])
    loss = attention_loss(s, t, m)
    assert loss.item() == pytest.approx(5.0, abs=TOL)
    loss.backward()
    # grad = 2 * diff / 2 entries at (0,0); zero elsewhere
    expected_grad = torch.zeros(1, 2, 2, 2)
    expected_grad[0, 0, 0, 0] = 1.0
    expected_grad[0, 1, 0, 0] = 3.0
    assert torch.equal(s.grad, expected_grad)


def test_attention_loss_head_mismatch_averages_heads_first():
    # student 2 heads: values 1 and 3 -> mean 2; teacher 3 heads: 4, 5, 9 -> mean 6
    # one valid entry: (2 - 6)^2 = 16
    s = torch.tensor([[[[1.0]], [[3.0]]]])
    t = torch.tensor([[[[4.0]], [[5.0]], [[9.0]]]])
    assert attention_loss(s, t, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(16.0, abs=TOL)


def test_attention_loss_fp16_teacher_and_empty_mask():
    s = torch.tensor([[[[1.0]]]], requires_grad=True)
    t16 = torch.tensor([[[[0.5]]]], dtype=torch.float16)
    assert attention_loss(s, t16, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0.25, abs=TOL)
    loss = attention_loss(s, t16, torch.zeros(1, 1, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad.item() == 0.0


def test_attention_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(batch, heads, length, length\)"):
        attention_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher_attention shape"):
        attention_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 3), torch.ones(1, 2, dtype=torch.bool))
