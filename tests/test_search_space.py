"""Spec search space -> Optuna distributions, sampled params, grid points, sampler/space rules."""

from __future__ import annotations

import random

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from distill_lab import search_space
from distill_lab import study as driver
from distill_lab.distill.mapping import build_mapping, is_monotone
from distill_lab.errors import SpecError
from distill_lab.spec import parse_spec, resolve

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TEACHER, N_STUDENT = 4, 2  # tiny-bert has 4 layers; the students here have 2


def _spec(space: dict, **study):
    raw = {"name": "space", "student": {"from_teacher": {"num_layers": N_STUDENT}},
           "study": {"search_space": space, **study}}
    return parse_spec(raw, source="test")


def _ask(spec, seed: int = 0, n_teacher: int = N_TEACHER, n_student: int = N_STUDENT):
    """One real trial of an in-memory study: (sampled params, the trial's distributions)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    params = search_space.suggest(trial, spec, n_teacher=n_teacher, n_student=n_student)
    return params, trial.distributions, trial


# --------------------------------------------------------------------------- distributions
def test_suggest_float_log_gives_log_float_distribution_within_bounds():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1.0, "high": 16.0, "log": True}})
    for seed in range(20):
        params, distributions, _ = _ask(spec, seed)
        assert distributions == {"distill.temperature": FloatDistribution(1.0, 16.0, log=True)}
        assert 1.0 <= params["distill.temperature"] <= 16.0
    assert resolve(spec, params).distill.temperature == params["distill.temperature"]


def test_suggest_float_step_gives_values_on_the_step_grid():
    spec = _spec({"distill.alpha_soft": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.2}})
    seen = set()
    for seed in range(40):
        params, distributions, _ = _ask(spec, seed)
        assert distributions == {"distill.alpha_soft": FloatDistribution(0.1, 0.9, step=0.2)}
        seen.add(round(params["distill.alpha_soft"], 10))
    assert seen == {0.1, 0.3, 0.5, 0.7, 0.9}


def test_suggest_int_and_int_log_give_int_distributions():
    spec = _spec({"training.batch_size": {"type": "int", "low": 4, "high": 64, "log": True},
                  "training.eval_every": {"type": "int", "low": 10, "high": 30, "step": 10}})
    values = set()
    for seed in range(30):
        params, distributions, _ = _ask(spec, seed)
        assert distributions == {"training.batch_size": IntDistribution(4, 64, log=True),
                                 "training.eval_every": IntDistribution(10, 30, step=10)}
        assert isinstance(params["training.batch_size"], int) and 4 <= params["training.batch_size"] <= 64
        values.add(params["training.eval_every"])
    assert values == {10, 20, 30}


def test_suggest_categorical_list_choices_travel_as_json_and_decode_back():
    choices = [[0, 3], [1, 2], "uniform"]
    spec = _spec({"student.init.layers": {"type": "categorical", "choices": choices}})
    _, distributions, _ = _ask(spec)
    # Optuna only stores primitives: list choices are encoded as JSON strings with a prefix.
    assert distributions == {"student.init.layers": CategoricalDistribution(("json:[0, 3]", "json:[1, 2]", "uniform"))}
    for encoded, expected in (("json:[0, 3]", [0, 3]), ("json:[1, 2]", [1, 2]), ("uniform", "uniform")):
        params = search_space.suggest(optuna.trial.FixedTrial({"student.init.layers": encoded}), spec,
                                      n_teacher=N_TEACHER, n_student=N_STUDENT)
        assert params == {"student.init.layers": expected}
        assert resolve(spec, params).student.init.layers == expected
    assert search_space.decode("json:[1, 2]") == [1, 2]
    assert search_space.decode("plain") == "plain" and search_space.decode(3) == 3


def test_suggest_categorical_dict_choice_is_encoded_with_sorted_keys():
    spec = _spec({"distill.class_weights": {"type": "categorical", "choices": ["none", {"PER": 2.0, "LOC": 1.5}]}})
    _, distributions, _ = _ask(spec)
    assert distributions["distill.class_weights"].choices == ("none", 'json:{"LOC": 1.5, "PER": 2.0}')
    params = search_space.suggest(optuna.trial.FixedTrial({"distill.class_weights": 'json:{"LOC": 1.5, "PER": 2.0}'}),
                                  spec, n_teacher=N_TEACHER, n_student=N_STUDENT)
    assert params == {"distill.class_weights": {"LOC": 1.5, "PER": 2.0}}


def test_suggest_grid_param_is_a_categorical_over_its_values():
    spec = _spec({"distill.temperature": {"type": "grid", "values": [1, 2, 4, 8]}}, sampler="grid")
    _, distributions, _ = _ask(spec)
    assert distributions == {"distill.temperature": CategoricalDistribution((1, 2, 4, 8))}


def test_grid_points_are_the_cartesian_product_in_spec_order():
    spec = _spec({"distill.temperature": {"type": "grid", "values": [1, 4]},
                  "student.init.layers": {"type": "grid", "values": ["uniform", [0, 3]]},
                  "distill.alpha_soft": {"type": "categorical", "choices": [0.25, 0.75]}}, sampler="grid")
    assert search_space.is_grid(spec)
    points = search_space.grid_points(spec)
    assert points == [
        {"distill.temperature": t, "student.init.layers": layers, "distill.alpha_soft": alpha}
        for t in (1, 4) for layers in ("uniform", "json:[0, 3]") for alpha in (0.25, 0.75)
    ]
    assert driver.grid_size(spec) == 8
    # A grid study's target is its size, whatever n_trials says.
    assert driver.target_trials(spec, 3) == 8 and driver.target_trials(spec, None) == 8


def test_grid_size_is_zero_and_target_is_n_trials_for_a_non_grid_study():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1, "high": 4}}, n_trials=5)
    assert not search_space.is_grid(spec)
    assert driver.grid_size(spec) == 0
    assert driver.target_trials(spec, None) == 5 and driver.target_trials(spec, 9) == 9


def test_suggest_mapping_strategy_gives_a_named_strategy_mapping():
    spec = _spec({"distill.layer_mapping": {"type": "mapping_strategy", "choices": ["uniform", "last", "skip"]}})
    _, distributions, _ = _ask(spec)
    assert distributions == {"distill.layer_mapping": CategoricalDistribution(("uniform", "last", "skip"))}
    for name in ("uniform", "last", "skip"):
        params = search_space.suggest(optuna.trial.FixedTrial({"distill.layer_mapping": name}), spec,
                                      n_teacher=N_TEACHER, n_student=N_STUDENT)
        assert params["distill.layer_mapping"]["strategy"] == name
        assert params["distill.layer_mapping"]["pairs"] is None and params["distill.layer_mapping"]["groups"] is None
        assert resolve(spec, params).distill.layer_mapping.strategy == name


def test_grid_points_of_mapping_strategy_are_strategy_names():
    spec = _spec({"distill.layer_mapping": {"type": "mapping_strategy", "choices": ["uniform", "last"]}},
                 sampler="grid")
    assert search_space.grid_points(spec) == [{"distill.layer_mapping": "uniform"},
                                              {"distill.layer_mapping": "last"}]


def test_a_grid_of_mappings_runs_each_one_explicit_mapping_included():
    their = {"strategy": "explicit", "pairs": [[0, 0], [3, 1]]}
    spec = _spec({"distill.layer_mapping": {"type": "grid", "values": [their, {"strategy": "last"}]}}, sampler="grid")
    points = search_space.grid_points(spec)
    assert len(points) == 2
    sampled = [search_space.suggest(optuna.trial.FixedTrial(point), spec, n_teacher=N_TEACHER, n_student=N_STUDENT)
               for point in points]
    configs = [resolve(spec, params).distill.layer_mapping for params in sampled]
    assert configs[0].strategy == "explicit" and [tuple(p) for p in configs[0].pairs] == [(0, 0), (3, 1)]
    assert configs[1].strategy == "last" and configs[1].pairs is None
    # A pair the student cannot take fails that trial's suggestion, before any training.
    bad = _spec({"distill.layer_mapping": {"type": "grid", "values": [{"strategy": "explicit", "pairs": [[0, 0], [3, 5]]}]}},
                sampler="grid")
    with pytest.raises(SpecError, match="student layer 5 is out of range; allowed 0..1"):
        search_space.suggest(optuna.trial.FixedTrial(search_space.grid_points(bad)[0]), bad,
                             n_teacher=N_TEACHER, n_student=N_STUDENT)


def test_suggest_monotone_mapping_gives_explicit_pairs_and_offset_params():
    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": False}})
    params, distributions, _ = _ask(spec, n_teacher=12, n_student=4)
    mapping = params["distill.layer_mapping"]
    assert mapping["strategy"] == "explicit" and mapping["groups"] is None
    assert [student for _, student in mapping["pairs"]] == [0, 1, 2, 3]
    # Each student layer's teacher layer is an offset from the previous choice: never a bad mapping.
    assert set(distributions) <= {f"distill.layer_mapping.s{i}_offset" for i in range(4)}
    assert "distill.layer_mapping.s0_offset" in distributions
    assert distributions["distill.layer_mapping.s0_offset"] == IntDistribution(0, 8)
    assert resolve(spec, params).distill.layer_mapping.pairs == [tuple(p) for p in mapping["pairs"]]


def test_status_shows_a_sampled_monotone_mapping_as_the_pairs_it_stands_for():
    from distill_lab.study.storage import StudyContext
    from distill_lab.study.summary import trials_table

    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": False},
                  "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    params = search_space.suggest(trial, spec, n_teacher=12, n_student=4)
    study.tell(trial, 0.5)
    pairs = params["distill.layer_mapping"]["pairs"]
    label = "explicit[" + ",".join(f"{t}>{s}" for t, s in pairs) + "]"
    ctx = StudyContext(spec, "memory", "", 1, 12, 4)
    (row,) = trials_table(study, ctx)
    assert row["params"] == f"temperature={params['distill.temperature']:.4g} layer_mapping={label}"
    (raw,) = trials_table(study)  # without the study's context: Optuna's offsets, as stored
    assert "s0_offset=" in raw["params"] and "explicit[" not in raw["params"]


def test_suggest_monotone_mapping_with_pinned_ends_and_no_room_samples_nothing():
    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": True}})
    params, distributions, _ = _ask(spec, n_teacher=4, n_student=4)
    assert params["distill.layer_mapping"]["pairs"] == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert distributions == {}
    params, distributions, _ = _ask(spec, n_teacher=4, n_student=2)
    assert params["distill.layer_mapping"]["pairs"] == [[0, 0], [3, 1]]
    assert distributions == {}


def test_suggest_monotone_mapping_rejects_a_student_deeper_than_the_teacher():
    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping"}})
    with pytest.raises(SpecError, match=r"distill\.layer_mapping.*\(5\) <= teacher layers \(4\)"):
        _ask(spec, n_teacher=4, n_student=5)


def test_suggest_rerun_with_fixed_trial_reproduces_the_sampled_params():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1.0, "high": 16.0, "log": True},
                  "training.batch_size": {"type": "int", "low": 4, "high": 64},
                  "student.init.layers": {"type": "categorical", "choices": [[0, 3], "uniform"]},
                  "distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": False}})
    for seed in range(10):
        params, _, trial = _ask(spec, seed, n_teacher=8, n_student=3)
        replayed = search_space.suggest(optuna.trial.FixedTrial(trial.params), spec, n_teacher=8, n_student=3)
        assert replayed == params


# --------------------------------------------------------------------------- monotone mapping property
def _check_monotone(layers: list[int], n_teacher: int, n_student: int, pin_ends: bool) -> None:
    assert len(layers) == n_student
    assert all(0 <= t < n_teacher for t in layers)
    assert all(a < b for a, b in zip(layers, layers[1:])), layers
    if pin_ends:
        assert layers[0] == 0
        if n_student >= 2:
            assert layers[-1] == n_teacher - 1
    mapping = build_mapping("explicit", n_teacher, n_student, pairs=[[t, s] for s, t in enumerate(layers)])
    assert is_monotone(mapping)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), pin_ends=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_suggest_monotone_never_yields_an_invalid_mapping(data, pin_ends, seed):
    n_teacher = data.draw(st.integers(1, 24), label="n_teacher")
    n_student = data.draw(st.integers(1, n_teacher), label="n_student")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    layers = search_space.suggest_monotone(study.ask(), n_teacher, n_student, pin_ends=pin_ends)
    _check_monotone(layers, n_teacher, n_student, pin_ends)


def test_suggest_monotone_valid_over_many_random_seeds_and_covers_every_layout():
    rng = random.Random(1234)
    layouts: set[tuple[int, ...]] = set()
    for seed in range(400):
        n_teacher = rng.randint(1, 16)
        n_student = rng.randint(1, n_teacher)
        pin_ends = rng.random() < 0.5
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        layers = search_space.suggest_monotone(study.ask(), n_teacher, n_student, pin_ends=pin_ends)
        _check_monotone(layers, n_teacher, n_student, pin_ends)
    # Within one study (TPE, as in a real sweep) every one of the C(6,3)=20 layouts is reachable.
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(200):
        trial = study.ask()
        layers = search_space.suggest_monotone(trial, 6, 3, pin_ends=False)
        _check_monotone(layers, 6, 3, False)
        layouts.add(tuple(layers))
        study.tell(trial, sum(layers) / 15)
    assert len(layouts) >= 15


def test_suggest_monotone_follows_a_searched_student_depth_in_any_key_order():
    # The mapping key comes first: the student depth it depends on is sampled after it in the spec.
    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": True},
                  "student.from_teacher.num_layers": {"type": "int", "low": 1, "high": 4}})
    depths = set()
    for seed in range(60):
        params, _, _ = _ask(spec, seed)
        depth = params["student.from_teacher.num_layers"]
        pairs = params["distill.layer_mapping"]["pairs"]
        depths.add(depth)
        assert [s for _, s in pairs] == list(range(depth))
        if depth >= 2:
            assert pairs[0][0] == 0 and pairs[-1][0] == N_TEACHER - 1
        _check_monotone([t for t, _ in pairs], N_TEACHER, depth, True)
    assert depths == {1, 2, 3, 4}


# --------------------------------------------------------------------------- check_space
def test_check_space_rejects_cmaes_with_a_categorical_param():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1, "high": 8},
                  "student.init.layers": {"type": "categorical", "choices": ["uniform", "first"]}}, sampler="cmaes")
    with pytest.raises(SpecError, match=r"'cmaes' only searches float/int.*student\.init\.layers"):
        search_space.check_space(spec)


def test_check_space_rejects_cmaes_with_a_mapping_param():
    spec = _spec({"distill.layer_mapping": {"type": "monotone_mapping"}}, sampler="cmaes")
    with pytest.raises(SpecError, match="cmaes"):
        search_space.check_space(spec)


def test_check_space_accepts_cmaes_with_float_and_int_params():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1, "high": 8},
                  "training.batch_size": {"type": "int", "low": 8, "high": 32}}, sampler="cmaes")
    search_space.check_space(spec)
    assert isinstance(search_space.sampler_for(spec), optuna.samplers.CmaEsSampler)


def test_check_space_rejects_grid_params_with_sampler_tpe():
    spec = _spec({"distill.temperature": {"type": "grid", "values": [1, 2]}}, sampler="tpe")
    with pytest.raises(SpecError, match=r"study\.sampler: grid parameters need sampler 'grid', got 'tpe'"):
        search_space.check_space(spec)


def test_check_space_rejects_a_float_param_in_a_grid_study():
    spec = _spec({"distill.temperature": {"type": "grid", "values": [1, 2]},
                  "distill.alpha_soft": {"type": "float", "low": 0.1, "high": 0.9}}, sampler="grid")
    with pytest.raises(SpecError, match=r"grid study enumerates every point.*distill\.alpha_soft"):
        search_space.check_space(spec)


def test_check_space_rejects_grid_sampler_without_params():
    with pytest.raises(SpecError, match="needs at least one grid parameter"):
        search_space.check_space(_spec({}, sampler="grid"))


def test_check_space_accepts_a_grid_of_grid_categorical_and_mapping_strategy_params():
    spec = _spec({"distill.temperature": {"type": "grid", "values": [1, 2]},
                  "distill.alpha_soft": {"type": "categorical", "choices": [0.3, 0.7]},
                  "distill.layer_mapping": {"type": "mapping_strategy", "choices": ["uniform", "last"]}},
                 sampler="grid")
    search_space.check_space(spec)
    assert driver.grid_size(spec) == 8


def test_check_space_rejects_an_out_of_range_high_bound():
    # The spec only checks the low bound (one representative value); the high one is checked here.
    spec = _spec({"training.warmup_ratio": {"type": "float", "low": 0.1, "high": 1.5}})
    with pytest.raises(SpecError, match=r"'training\.warmup_ratio': high 1\.5 is invalid.*less than or equal to 1"):
        search_space.check_space(spec)


def test_check_space_rejects_a_bad_later_categorical_choice():
    spec = _spec({"distill.temperature": {"type": "categorical", "choices": [2.0, -1.0]}})
    with pytest.raises(SpecError, match=r"'distill\.temperature': choice -1\.0 is invalid.*must be > 0"):
        search_space.check_space(spec)


def test_check_space_rejects_a_grid_point_that_is_never_a_valid_config():
    spec = _spec({"distill.alpha_hard": {"type": "grid", "values": [0.0, 0.5]},
                  "distill.alpha_soft": {"type": "grid", "values": [0.0, 0.5]}}, sampler="grid")
    with pytest.raises(SpecError, match=r"grid point \{'distill\.alpha_hard': 0\.0, 'distill\.alpha_soft': 0\.0\}"):
        search_space.check_space(spec)


def test_check_space_allows_values_invalid_only_in_some_combinations_of_a_random_search():
    # alpha_hard=0 with alpha_soft=0 is invalid, but a random search may still sample other pairs.
    spec = _spec({"distill.alpha_hard": {"type": "categorical", "choices": [0.0, 0.5]},
                  "distill.alpha_soft": {"type": "categorical", "choices": [0.0, 0.5]}}, sampler="random")
    search_space.check_space(spec)


# --------------------------------------------------------------------------- samplers / pruners
def test_sampler_for_and_pruner_for_map_names_to_optuna_objects():
    cases = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
             "grid": optuna.samplers.RandomSampler, "gp": optuna.samplers.GPSampler}
    for name, kind in cases.items():
        space = {"distill.temperature": {"type": "grid", "values": [1, 2]}} if name == "grid" else {}
        assert type(search_space.sampler_for(_spec(space, sampler=name))) is kind
    pruners = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
    for name, kind in pruners.items():
        assert type(search_space.pruner_for(_spec({}, pruner=name))) is kind


def test_sampler_for_is_seeded_so_two_studies_sample_the_same_params():
    spec = _spec({"distill.temperature": {"type": "float", "low": 1, "high": 16, "log": True}},
                 sampler="tpe", sampler_seed=7)
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=search_space.sampler_for(spec))
        values = []
        for _ in range(6):
            trial = study.ask()
            values.append(search_space.suggest(trial, spec, n_teacher=4, n_student=2)["distill.temperature"])
            study.tell(trial, values[-1])
        runs.append(values)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 6
