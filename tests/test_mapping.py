from __future__ import annotations

import pytest

from distill_lab.distill.mapping import (
    MAPPING_STRATEGIES,
    build_mapping,
    describe,
    hidden_index,
    is_monotone,
    teacher_layers_needed,
    uniform_indices,
    validate_mapping,
)
from distill_lab.errors import SpecError

# ----------------------------------------------------------------------------- uniform_indices


def test_uniform_indices_12_to_4_required_layout():
    assert uniform_indices(12, 4) == [0, 4, 8, 11]


def test_uniform_indices_24_to_12_required_layout():
    assert uniform_indices(24, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]


@pytest.mark.parametrize(
    ("n_source", "n_target", "expected"),
    [
        (6, 3, [0, 3, 5]),  # stride round(5/2 = 2.5) = 3, half rounds up
        (6, 2, [0, 5]),
        (4, 4, [0, 1, 2, 3]),
        (24, 6, [0, 5, 10, 15, 20, 23]),  # stride round(23/5 = 4.6) = 5
        (10, 7, [0, 2, 4, 6, 7, 8, 9]),  # stride 2 clamped near the end
        (7, 1, [6]),
        (1, 1, [0]),
    ],
)
def test_uniform_indices_other_layouts(n_source, n_target, expected):
    assert uniform_indices(n_source, n_target) == expected


def test_uniform_indices_always_strictly_increasing_head_and_tail():
    for n_source in range(1, 41):
        for n_target in range(1, n_source + 1):
            idx = uniform_indices(n_source, n_target)
            assert len(idx) == n_target, (n_source, n_target)
            assert all(a < b for a, b in zip(idx, idx[1:])), (n_source, n_target, idx)
            assert idx[-1] == n_source - 1
            if n_target > 1:
                assert idx[0] == 0


def test_uniform_indices_rejects_bad_counts():
    with pytest.raises(ValueError, match="n_target=5 exceeds n_source=4"):
        uniform_indices(4, 5)
    with pytest.raises(ValueError, match="n_target must be a positive int"):
        uniform_indices(4, 0)


# ----------------------------------------------------------------------------- strategies


def test_build_mapping_uniform_12_to_4():
    m = build_mapping("uniform", 12, 4)
    assert m == (((0,), 0), ((4,), 1), ((8,), 2), ((11,), 3))
    assert describe(m) == "0->0 4->1 8->2 11->3"


def test_build_mapping_uniform_24_to_12():
    m = build_mapping("uniform", 24, 12)
    assert describe(m) == "0->0 2->1 4->2 6->3 8->4 10->5 12->6 14->7 16->8 18->9 20->10 23->11"


def test_build_mapping_last():
    assert build_mapping("last", 12, 4) == (((8,), 0), ((9,), 1), ((10,), 2), ((11,), 3))


def test_build_mapping_skip_takes_end_of_each_block():
    assert describe(build_mapping("skip", 12, 4)) == "2->0 5->1 8->2 11->3"
    assert describe(build_mapping("skip", 12, 6)) == "1->0 3->1 5->2 7->3 9->4 11->5"
    # 13 // 4 = 3: trailing teacher layer 12 unused
    assert describe(build_mapping("skip", 13, 4)) == "2->0 5->1 8->2 11->3"


def test_build_mapping_many_to_one_even_split():
    m = build_mapping("many_to_one", 12, 4)
    assert m == (((0, 1, 2), 0), ((3, 4, 5), 1), ((6, 7, 8), 2), ((9, 10, 11), 3))
    assert describe(m) == "0+1+2->0 3+4+5->1 6+7+8->2 9+10+11->3"


def test_build_mapping_many_to_one_uneven_split_earlier_groups_larger():
    assert describe(build_mapping("many_to_one", 10, 4)) == "0+1+2->0 3+4+5->1 6+7->2 8+9->3"


def test_build_mapping_many_to_one_explicit_groups():
    m = build_mapping("many_to_one", 6, 3, groups=[[1, 0], [2], [5, 3, 4]])
    assert m == (((0, 1), 0), ((2,), 1), ((3, 4, 5), 2))
    assert describe(m) == "0+1->0 2->1 3+4+5->2"


def test_build_mapping_explicit_one_to_one_sorted_by_student():
    m = build_mapping("explicit", 12, 3, pairs=[[11, 2], [0, 0], [6, 1]])
    assert m == (((0,), 0), ((6,), 1), ((11,), 2))


def test_build_mapping_explicit_many_to_one_grouped():
    m = build_mapping("explicit", 12, 4, pairs=[[1, 0], [0, 0], [11, 3]])
    assert m == (((0, 1), 0), ((11,), 3))
    assert describe(m) == "0+1->0 11->3"


def test_build_mapping_registry_names():
    assert set(MAPPING_STRATEGIES) == {"uniform", "last", "skip", "many_to_one", "explicit"}


# ----------------------------------------------------------------------------- rejections


def test_build_mapping_rejects_unknown_strategy_listing_valid():
    with pytest.raises(
        SpecError,
        match=r"distill\.layer_mapping: unknown strategy 'zigzag'; valid strategies: explicit, last, many_to_one, skip, uniform",
    ):
        build_mapping("zigzag", 12, 4)


@pytest.mark.parametrize("strategy", ["uniform", "last", "skip", "many_to_one"])
def test_build_mapping_rejects_more_students_than_teachers(strategy):
    with pytest.raises(
        SpecError,
        match=rf"distill\.layer_mapping: strategy '{strategy}' needs n_student <= n_teacher; "
        r"got n_student=6 > n_teacher=4 \(allowed 1\.\.4\)",
    ):
        build_mapping(strategy, 4, 6)


@pytest.mark.parametrize(("n_teacher", "n_student"), [(0, 4), (12, 0), (-1, 2), (True, 1)])
def test_build_mapping_rejects_bad_counts(n_teacher, n_student):
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: n_(teacher|student) must be a positive int"):
        build_mapping("uniform", n_teacher, n_student)


def test_build_mapping_explicit_rejects_teacher_out_of_range():
    with pytest.raises(
        SpecError, match=r"distill\.layer_mapping: teacher layer 12 is out of range; allowed 0\.\.11"
    ):
        build_mapping("explicit", 12, 4, pairs=[[12, 0]])


def test_build_mapping_explicit_rejects_negative_teacher():
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: teacher layer -1 is out of range; allowed 0\.\.11"):
        build_mapping("explicit", 12, 4, pairs=[[-1, 0]])


def test_build_mapping_explicit_rejects_student_out_of_range():
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: student layer 4 is out of range; allowed 0\.\.3"):
        build_mapping("explicit", 12, 4, pairs=[[0, 4]])
    with pytest.raises(SpecError, match=r"student layer -2 is out of range; allowed 0\.\.3"):
        build_mapping("explicit", 12, 4, pairs=[[0, -2]])


def test_build_mapping_explicit_rejects_non_int_layers():
    with pytest.raises(SpecError, match=r"teacher layer '3' is out of range"):
        build_mapping("explicit", 12, 4, pairs=[["3", 0]])
    with pytest.raises(SpecError, match=r"teacher layer True is out of range"):
        build_mapping("explicit", 12, 4, pairs=[[True, 0]])


def test_build_mapping_explicit_rejects_duplicate_pairs():
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: duplicate pair \[3, 1\]"):
        build_mapping("explicit", 12, 4, pairs=[[3, 1], [0, 0], [3, 1]])


def test_build_mapping_explicit_rejects_empty_missing_and_malformed_pairs():
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: pairs must be a non-empty list"):
        build_mapping("explicit", 12, 4, pairs=[])
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: strategy 'explicit' needs pairs"):
        build_mapping("explicit", 12, 4)
    with pytest.raises(SpecError, match=r"pair \[1, 2, 3\] is not a \[teacher, student\] pair"):
        build_mapping("explicit", 12, 4, pairs=[[1, 2, 3]])


def test_build_mapping_rejects_arguments_the_strategy_ignores():
    with pytest.raises(SpecError, match=r"pairs is only used by strategy 'explicit', not 'uniform'"):
        build_mapping("uniform", 12, 4, pairs=[[0, 0]])
    with pytest.raises(SpecError, match=r"groups is only used by strategy 'many_to_one', not 'explicit'"):
        build_mapping("explicit", 12, 4, pairs=[[0, 0]], groups=[[0]])


def test_build_mapping_many_to_one_rejects_empty_group():
    with pytest.raises(
        SpecError, match=r"distill\.layer_mapping: student layer 1 has no teacher layer; allowed 0\.\.5"
    ):
        build_mapping("many_to_one", 6, 3, groups=[[0, 1], [], [4, 5]])


def test_build_mapping_many_to_one_rejects_wrong_group_count():
    with pytest.raises(
        SpecError, match=r"groups has 2 entries but the student has 3 layers.*0\.\.2"
    ):
        build_mapping("many_to_one", 6, 3, groups=[[0], [1]])


def test_build_mapping_many_to_one_rejects_out_of_range_and_duplicate_in_group():
    with pytest.raises(SpecError, match=r"teacher layer 6 is out of range; allowed 0\.\.5"):
        build_mapping("many_to_one", 6, 2, groups=[[0, 6], [1]])
    with pytest.raises(SpecError, match=r"duplicate pair \[2, 1\]"):
        build_mapping("many_to_one", 6, 2, groups=[[0], [2, 2]])


# ----------------------------------------------------------------------------- validate_mapping


def test_validate_mapping_accepts_built_mapping():
    validate_mapping(build_mapping("uniform", 12, 4), 12, 4)  # no exception
    # lists (a mapping read back from JSON) are accepted too
    validate_mapping([[[0, 1], 0], [[5], 1]], 6, 2)


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ((), r"mapping is empty"),
        ((((0,), 0), ((1,), 0)), r"student layer 0 appears more than once"),
        ((((1,), 1), ((0,), 0)), r"sorted by student layer; 0 follows 1"),
        ((((), 0),), r"student layer 0 has no teacher layer; allowed 0\.\.5"),
        ((((0, 0), 0),), r"duplicate teacher layer in group \[0, 0\]"),
        ((((6,), 0),), r"teacher layer 6 is out of range; allowed 0\.\.5"),
        ((((0,), 2),), r"student layer 2 is out of range; allowed 0\.\.1"),
        ((((0,),),), r"is not a \(teacher_group, student_layer\) pair"),
    ],
)
def test_validate_mapping_rejections(mapping, match):
    with pytest.raises(SpecError, match=r"distill\.layer_mapping: .*" + match):
        validate_mapping(mapping, 6, 2)


def test_validate_mapping_checks_against_real_counts():
    m = build_mapping("uniform", 12, 4)
    # the same mapping for a 6-layer teacher is invalid
    with pytest.raises(SpecError, match=r"teacher layer 8 is out of range; allowed 0\.\.5"):
        validate_mapping(m, 6, 4)


# ----------------------------------------------------------------------------- queries


def test_teacher_layers_needed_sorted_unique():
    m = build_mapping("explicit", 12, 3, pairs=[[11, 2], [3, 0], [1, 0], [3, 1]])
    assert teacher_layers_needed(m) == (1, 3, 11)


def test_is_monotone():
    assert is_monotone(build_mapping("uniform", 12, 4)) is True
    assert is_monotone(build_mapping("many_to_one", 12, 4)) is True
    assert is_monotone(build_mapping("explicit", 12, 2, pairs=[[5, 0], [3, 1]])) is False
    # equal teacher layer for consecutive students is not strictly increasing
    assert is_monotone(build_mapping("explicit", 12, 2, pairs=[[3, 0], [3, 1]])) is False
    # overlapping groups: max(group 0) = 2 is not < min(group 1) = 2
    assert is_monotone(build_mapping("many_to_one", 6, 2, groups=[[0, 2], [2, 5]])) is False
    assert is_monotone(build_mapping("explicit", 12, 1, pairs=[[7, 0]])) is True


def test_describe_groups_and_single():
    assert describe(build_mapping("many_to_one", 4, 2)) == "0+1->0 2+3->1"
    assert describe(build_mapping("last", 3, 1)) == "2->0"


def test_hidden_index_skips_embedding_output_which_is_layer_minus_one():
    assert hidden_index(0) == 1
    assert hidden_index(11) == 12
    assert hidden_index(-1) == 0  # EMBEDDINGS: the embedding output, TinyBERT's layer 0
    with pytest.raises(ValueError, match=r"int >= -1"):
        hidden_index(-2)
    with pytest.raises(ValueError, match=r"int >= -1"):
        hidden_index(True)
