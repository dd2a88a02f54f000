"""The only code that calls `trial.suggest_*`: spec search space -> sampled dotted-key params.

Layer mappings are a structured parameter: a categorical over named strategies, or a `monotone`
space in which the teacher layer of every student layer is searched, strictly increasing, with
head->head and tail->tail optionally pinned. Sampled mappings are valid by construction.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import optuna
from pydantic import ValidationError

from distill_lab.distill.mapping import build_mapping
from distill_lab.errors import SpecError
from distill_lab.spec import (
    RUN_SECTIONS,
    CategoricalParam,
    FloatParam,
    GridParam,
    IntParam,
    MappingStrategyParam,
    MonotoneMappingParam,
    RunConfig,
    StudySpec,
    resolve,
    set_dotted,
)

MAPPING_KEY = "distill.layer_mapping"
_PRIMITIVES = (str, int, float, bool, type(None))


def _encode(value: Any) -> Any:
    # Optuna categorical choices must be primitives: lists/dicts travel as JSON strings.
    return value if isinstance(value, _PRIMITIVES) else "json:" + json.dumps(value, sort_keys=True)


def decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def is_grid(spec: StudySpec) -> bool:
    return spec.study.sampler == "grid" or any(isinstance(p, GridParam) for p in spec.study.search_space.values())


def check_space(spec: StudySpec) -> None:
    """Cross-field rules between sampler and search space (per-parameter rules live in spec.py)."""
    space = spec.study.search_space
    sampler = spec.study.sampler
    if is_grid(spec):
        bad = [path for path, p in space.items() if isinstance(p, (FloatParam, IntParam, MonotoneMappingParam))]
        if bad:
            raise SpecError(
                f"study.search_space: a grid study enumerates every point, so {bad} must be grid, categorical "
                "or mapping_strategy parameters (or choose sampler tpe/random/gp)"
            )
        if sampler != "grid":
            raise SpecError(f"study.sampler: grid parameters need sampler 'grid', got {sampler!r}")
        if not space:
            raise SpecError("study.search_space: sampler 'grid' needs at least one grid parameter")
    if sampler == "cmaes":
        bad = [path for path, p in space.items() if not isinstance(p, (FloatParam, IntParam))]
        if bad:
            raise SpecError(
                f"study.sampler: 'cmaes' only searches float/int parameters; {bad} are categorical "
                "(use tpe or random)"
            )
    _check_values(spec)


def _field_problem(spec: StudySpec, path: str, value: Any) -> str | None:
    """Why `value` is invalid for the field at `path` alone (None if it is valid there).

    Errors of whole sections (e.g. all loss weights 0) depend on the other values and are not
    blamed on one searched value here.
    """
    tree = spec.model_dump(mode="json", include=set(RUN_SECTIONS) | {"name"})
    set_dotted(tree, path, value, create=False)
    try:
        RunConfig.model_validate(tree)
    except ValidationError as err:
        for error in err.errors():
            location = ".".join(str(part) for part in error["loc"])
            if location == path or location.startswith(path + "."):
                return str(error["msg"]).removeprefix("Value error, ")
    return None


def _check_values(spec: StudySpec) -> None:
    """Every value a searched parameter can take must be valid for its field, before anything runs.

    The spec itself checks one representative value per parameter (its low / first choice); a bad
    high bound or a bad later choice would otherwise only fail trials once the study is running.
    """
    space = spec.study.search_space
    for path, param in space.items():
        if isinstance(param, (FloatParam, IntParam)):
            candidates = [("low", param.low), ("high", param.high)]
        elif isinstance(param, CategoricalParam):
            candidates = [("choice", choice) for choice in param.choices]
        elif isinstance(param, GridParam):
            candidates = [("grid value", value) for value in param.values]
        else:  # mapping parameters: strategy names are checked by the spec, layers need the models
            continue
        for label, value in candidates:
            problem = _field_problem(spec, path, value)
            if problem:
                raise SpecError(f"study.search_space {path!r}: {label} {value!r} is invalid for {path}: {problem}")
    if is_grid(spec):
        # Every grid point is run exactly once and the study is done only when all are finished:
        # a point that can never be a valid config would keep the study unfinished forever.
        grid_configs(spec)


def grid_configs(spec: StudySpec) -> list[tuple[dict[str, Any], RunConfig]]:
    """(point, run config) of every grid point; a point that is no valid config is a one-line SpecError."""
    space = spec.study.search_space
    configs = []
    for point in grid_points(spec):
        params = {}
        for path, value in point.items():
            value = decode(value)
            if isinstance(space[path], MappingStrategyParam):
                value = {"strategy": value, "pairs": None, "groups": None}
            params[path] = value
        shown = {path: decode(value) for path, value in point.items()}
        try:
            configs.append((shown, resolve(spec, params)))
        except SpecError as err:
            raise SpecError(f"study.search_space: grid point {shown} is not a valid run config: {err}") from None
    return configs


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of a grid study, as {dotted key: encoded value} in a fixed order."""
    axes: list[tuple[str, list[Any]]] = []
    for path, param in spec.study.search_space.items():
        if isinstance(param, GridParam):
            values = param.values
        elif isinstance(param, CategoricalParam):
            values = param.choices
        else:  # mapping_strategy
            values = list(param.choices)
        axes.append((path, [_encode(v) for v in values]))
    names = [name for name, _ in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(values for _, values in axes))]


def suggest(trial: optuna.Trial, spec: StudySpec, *, n_teacher: int, n_student: int) -> dict[str, Any]:
    """Sample every searched parameter; returns {dotted key: value} ready for spec.resolve()."""
    params: dict[str, Any] = {}
    # A monotone mapping depends on the student's depth, which may itself be searched: sample it
    # last, whatever the order of the spec's keys (stable sort keeps the rest in spec order).
    ordered = sorted(spec.study.search_space.items(), key=lambda item: isinstance(item[1], MonotoneMappingParam))
    for path, param in ordered:
        if isinstance(param, FloatParam):
            params[path] = trial.suggest_float(path, param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntParam):
            params[path] = trial.suggest_int(path, param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, (CategoricalParam, GridParam)):
            choices = param.choices if isinstance(param, CategoricalParam) else param.values
            params[path] = decode(trial.suggest_categorical(path, [_encode(c) for c in choices]))
        elif isinstance(param, MappingStrategyParam):
            strategy = trial.suggest_categorical(path, list(param.choices))
            params[path] = {"strategy": strategy, "pairs": None, "groups": None,
                            "include_embeddings": spec.distill.layer_mapping.include_embeddings}
        elif isinstance(param, MonotoneMappingParam):
            # The student's depth may itself be searched: use the sampled value when present.
            students = int(params.get("student.from_teacher.num_layers", n_student))
            layers = suggest_monotone(trial, n_teacher, students, pin_ends=param.pin_ends)
            params[path] = {"strategy": "explicit", "pairs": [[t, s] for s, t in enumerate(layers)], "groups": None,
                            "include_embeddings": spec.distill.layer_mapping.include_embeddings}
    if MAPPING_KEY in params:
        mapping = params[MAPPING_KEY]
        students = int(params.get("student.from_teacher.num_layers", n_student))
        # Validate before training: a bad sampled combination fails the trial, not the run.
        build_mapping(mapping["strategy"], n_teacher, students, pairs=mapping.get("pairs"), groups=mapping.get("groups"),
                      include_embeddings=bool(mapping.get("include_embeddings")))
    return params


def suggest_monotone(trial: optuna.Trial, n_teacher: int, n_student: int, *, pin_ends: bool = True) -> list[int]:
    """Teacher layer for each student layer, strictly increasing; each choice leaves room for the rest."""
    if n_student > n_teacher:
        raise SpecError(
            f"{MAPPING_KEY}: a monotone mapping needs student layers ({n_student}) <= teacher layers ({n_teacher})"
        )
    layers: list[int] = []
    for student_layer in range(n_student):
        low = layers[-1] + 1 if layers else 0
        high = n_teacher - (n_student - student_layer)
        if pin_ends and student_layer == 0:
            value = 0
        elif pin_ends and student_layer == n_student - 1:
            value = n_teacher - 1
        else:
            # Store the offset from `low`: the distribution stays fixed across trials for TPE.
            room = high - low
            value = low + (trial.suggest_int(f"{MAPPING_KEY}.s{student_layer}_offset", 0, room) if room > 0 else 0)
        layers.append(value)
    return layers


def sampler_for(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna sampler by name. Grid studies enqueue their points (see study.py), so random fills none."""
    # Each worker gets its own seed: identically seeded workers would propose identical points.
    name, seed = spec.study.sampler, spec.study.sampler_seed + worker
    if name == "tpe":
        # constant_liar: concurrent workers don't all sample the same promising point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=min(5, spec.study.n_trials))
    if name == "random" or name == "grid":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed)


def pruner_for(spec: StudySpec) -> optuna.pruners.BasePruner:
    name = spec.study.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()
