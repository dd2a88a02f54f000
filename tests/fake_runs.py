"""Fake but realistic distill-lab runs in an MLflow store, for report/dashboard tests and benchmarks.

Not a test module. `log_fake_study` writes what a real study leaves behind (see
`distill_lab.study.ensure_tracking`, `prepare_shared_teacher`, `run_trial` and `_log_final`):

* one experiment per study;
* a parent run: role=study, params study.* including `study.search_space` (JSON of the space);
* a teacher run: role=teacher, metrics dev_f1 / test_f1 / teacher_params;
* one trial run per sampled setting, every seed inside it: role=trial, FINISHED, optuna_state=COMPLETE,
  tags teacher/student/student_model/init/setting/mapping/diagnosis, params of the flattened config,
  step histories of dev_f1 (first seed) and seed<N>_dev_f1 (other seeds), and the final metrics
  best_dev_f1, dev_f1_seed<N> (the BEST dev F1 of seed N), test_f1_seed<N>, teacher_dev_f1, ...

Scores: dev F1 of (T, mapping, init, seed) = score(T) + mapping_effect[mapping] + init_effect[init]
+ Normal(0, noise). Every value logged is returned in `FakeStudy.values` (one row per run and seed) so
tests can recompute the expected table with pandas.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from distill_lab.naming import INIT_NAMES
from distill_lab.record_schema import OPTUNA_STATE, StudyRecord, TeacherRecord, TrialRecord, TrialStart, seed_metric
from distill_lab.tracking import PARENT_TAG

TEACHER = "MiniLM-L6 (6 layers)"
STUDENT_MODEL = "MiniLM (3 layers)"
TEACHER_PARAMS = 22_713_225
STUDENT_PARAMS = 17_390_985
FAKE_SPEEDUP = 1.93  # inference sentences/s, student / teacher, logged by every fake trial run


def _strings(tags: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in tags.items()}  # as Tracker.create_run sends them


def concave_score(t_star: float = 5.0, peak: float = 0.85, curvature: float = 0.02) -> Callable[[float], float]:
    """dev F1 = peak - curvature * (ln T - ln T*)^2: concave in log T with its maximum at T*."""
    return lambda t: peak - curvature * (math.log(t) - math.log(t_star)) ** 2


@dataclass
class FakeStudy:
    name: str
    experiment_id: str
    parent_run_id: str
    teacher_run_id: str
    trial_run_ids: list[str]
    teacher_dev_f1: float
    teacher_test_f1: float
    # One row per (trial run, seed): run_id, trial_number, temperature, mapping, init, init_name, setting,
    # seed, dev_f1 (the best), test_f1, last_dev_f1 (the last eval of the dev F1 curve).
    values: pd.DataFrame
    search_space: dict[str, Any] = field(default_factory=dict)


def _setting(temperature: float, alpha_hidden: float, mapping: str, alpha_hard: float = 0.2,
             alpha_soft: float = 0.8) -> str:
    text = f"T={temperature:.3g} a={alpha_hard:.2g}/{alpha_soft:.2g}/{alpha_hidden:.2g}"
    if alpha_hidden:
        text += f" map={mapping}"
    return text


def _param(value: Any) -> str:
    # Same encoding as distill_lab.tracking._param_value: strings as is, everything else as JSON.
    return value if isinstance(value, str) else json.dumps(value)


def _config_params(temperature: float, mapping: str, init: str, alpha_hidden: float, seed: int,
                   alpha_hard: float = 0.2, alpha_soft: float = 0.8) -> dict[str, Any]:
    return {
        "name": "fake", "data.source": "conll", "data.path": "data/conll2003", "data.max_train_sentences": 2000,
        "data.max_eval_sentences": 1000, "data.max_length": 128, "data.transfer": None,
        "teacher.model": "minilm-l6", "teacher.finetune.epochs": 3.0, "teacher.finetune.learning_rate": 1e-4,
        "teacher.checkpoint": None, "student.from_teacher.num_layers": 3, "student.model": None,
        "student.init.strategy": init, "student.init.layers": "uniform", "student.init.checkpoint": None,
        "training.epochs": 2.0, "training.learning_rate": 1e-4, "training.batch_size": 32,
        "training.seed": seed, "training.eval_every": 50, "training.device": "auto",
        "distill.temperature": float(temperature), "distill.alpha_hard": alpha_hard, "distill.alpha_soft": alpha_soft,
        "distill.alpha_hidden": alpha_hidden, "distill.alpha_attention": 0.0, "distill.hidden_loss": "mse",
        "distill.layer_mapping.strategy": mapping, "distill.layer_mapping.pairs": None,
        "distill.class_weights": "none", "diagnosis.overfit_gap": 0.15, "diagnosis.random_floor": 0.05,
    }


def _history(best: float, steps: int, drop: float, rng: np.random.Generator) -> list[tuple[int, float]]:
    """Eval curve that rises to `best` two evals before the end, then (with drop > 0) falls below it."""
    points = []
    peak_index = max(0, steps - 3) if drop > 0 else steps - 1
    for index in range(steps):
        step = 50 * (index + 1)
        if index < peak_index:
            value = best * (0.55 + 0.4 * index / max(1, peak_index)) + rng.normal(0, 0.002)
            value = min(value, best - 0.001)
        elif index == peak_index:
            value = best
        else:
            value = best - drop * (index - peak_index) / (steps - 1 - peak_index)
        points.append((step, float(value)))
    return points


def _log_batch(client: Any, run_id: str, metrics: list[Any], params: list[Any],
               tags: Mapping[str, str] | None = None) -> None:
    """As few log_batch calls as MLflow's limits allow (100 params, 1000 entities per call)."""
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    while metrics or params:
        batch_params, params = params[:100], params[100:]
        room = 1000 - len(batch_params)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=batch_metrics, params=batch_params)


def _template() -> Path:
    """An empty, fully migrated MLflow sqlite database, built once per MLflow/SQLAlchemy version.

    MLflow needs several seconds of migrations to create a store, so the template is kept in the
    system temp directory and reused by later sessions; a damaged copy is rebuilt.
    """
    import contextlib
    import os
    import sqlite3
    import tempfile
    from importlib.metadata import version  # importing mlflow just for its version takes seconds

    name = f"distill-lab-test-mlflow-{version('mlflow')}-sqlalchemy-{version('sqlalchemy')}.db"
    path = Path(tempfile.gettempdir()) / name
    if path.is_file():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
                if connection.execute("SELECT version_num FROM alembic_version").fetchone():
                    return path
        except sqlite3.Error:
            pass
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="distill-lab-mlflow-template-"))
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # creates and migrates the schema
        os.replace(folder / "mlflow.db", path)  # atomic: concurrent sessions never see half a database
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return path


def new_store(directory: Path | str) -> str:
    """`sqlite:///{directory}/mlflow.db`: an empty MLflow store, created in milliseconds (see _template)."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts next to a sqlite store (MLflow's default is ./mlruns in the current directory)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts")
    return None


def log_fake_study(
    tracking_uri: str,
    name: str,
    *,
    temperatures: Sequence[float] = (1, 2, 3, 4, 6, 8, 12, 16, 24),
    score: Callable[[float], float] | None = None,
    noise: float = 0.003,
    seeds: Sequence[int] = (1, 2, 3),
    mappings: Sequence[str] | None = None,
    mapping_effect: Mapping[str, float] | None = None,
    inits: Sequence[str] | None = None,
    init_effect: Mapping[str, float] | None = None,
    no_kd_effect: Mapping[str, float] | None = None,
    search_space: dict[str, Any] | None = None,
    teacher_dev_f1: float = 0.905,
    teacher_test_f1: float = 0.872,
    eval_steps: int = 6,
    last_dev_drop: float = 0.0,
    ui_dev_f1: bool = True,
    rng_seed: int = 0,
    client: Any = None,
) -> FakeStudy:
    """Log one fake study (parent, teacher and one trial run per setting) and return what was logged.

    Settings: the product temperatures x mappings x inits. `mappings` given -> alpha_hidden=1 and the
    mapping appears in the setting; `inits` are strategies (teacher | pretrained | random).
    `last_dev_drop` > 0 makes every dev F1 history end that much below its best; `ui_dev_f1=False`
    leaves out the final `dev_f1 = mean best` point, so the run's latest dev_f1 is the last eval.
    `no_kd_effect` given (per init) -> each init also has a no-KD arm (T=1, alpha hard/soft 1/0, no
    hidden loss) scoring score(first T) + mapping/init effects + no_kd_effect[init].
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(tracking_uri)
    score = score or concave_score()
    rng = np.random.default_rng(rng_seed)
    mapping_list = list(mappings) if mappings else ["uniform"]
    init_list = list(inits) if inits else ["teacher"]
    alpha_hidden = 1.0 if mappings else 0.0
    if search_space is None:
        search_space = {}
        if len(temperatures) > 1:
            search_space["distill.temperature"] = {"type": "grid", "values": [float(t) for t in temperatures]}
        if mappings:
            search_space["distill.layer_mapping"] = {"type": "mapping_strategy", "choices": mapping_list}
        if inits:
            search_space["student.init.strategy"] = {"type": "grid", "values": init_list}
        if no_kd_effect is not None:
            search_space["distill"] = {"type": "grid", "values": [
                {"temperature": 1.0, "alpha_hard": 1.0, "alpha_soft": 0.0},
                {"temperature": float(temperatures[0]), "alpha_hard": 0.2, "alpha_soft": 0.8}]}

    root = artifact_root(tracking_uri)
    experiment_id = client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    now = int(time.time() * 1000)
    parent = client.create_run(experiment_id, run_name=f"study {name}", tags=_strings(
        StudyRecord(study=name, optuna_storage="sqlite:///optuna.db").to_mlflow()))
    parent_id = parent.info.run_id
    study_params = StudyRecord.params({"n_trials": 9, "direction": "maximize", "metric": "dev_f1", "sampler": "grid",
                                       "pruner": "none", "seeds": list(seeds), "sampler_seed": 0,
                                       "search_space": search_space})
    client.log_batch(parent_id, params=[Param(k, _param(v)) for k, v in study_params.items()])

    teacher_tags, teacher_metrics = TeacherRecord(
        study=name, fingerprint=f"fp-{name}", teacher=TEACHER, dev_f1=teacher_dev_f1, test_f1=teacher_test_f1,
        params=TEACHER_PARAMS, fine_tune_seconds=41.5).to_mlflow()
    teacher = client.create_run(experiment_id, run_name="teacher minilm-l6",
                                tags={**_strings(teacher_tags), PARENT_TAG: parent_id})
    teacher_id = teacher.info.run_id
    client.log_batch(teacher_id, metrics=[Metric(k, float(v), now, 0) for k, v in teacher_metrics.items()],
                     params=[Param("teacher.model", "minilm-l6"), Param("teacher.finetune.epochs", "3.0"),
                             Param("data.max_length", "128")])
    client.set_terminated(teacher_id, "FINISHED")

    rows, run_ids = [], []
    number = 0
    for init in init_list:
        for mapping in mapping_list:
            arms = [(float(t), 0.2, 0.8, alpha_hidden, score(float(t))) for t in temperatures]
            if no_kd_effect is not None:
                arms.insert(0, (1.0, 1.0, 0.0, 0.0, score(float(temperatures[0])) + no_kd_effect.get(init, 0.0)))
            for temperature, alpha_hard, alpha_soft, hidden, arm_score in arms:
                base = arm_score + (mapping_effect or {}).get(mapping, 0.0) + (init_effect or {}).get(init, 0.0)
                setting = _setting(temperature, hidden, mapping, alpha_hard, alpha_soft)
                init_name = INIT_NAMES.get(init, init)
                start = TrialStart(study=name, trial_number=number, optuna_trial_id=number + 1, setting=setting,
                                   init=init_name, mapping=mapping).to_mlflow()
                tags = {**_strings(start), OPTUNA_STATE: "COMPLETE", PARENT_TAG: parent_id}
                run = client.create_run(experiment_id, run_name=f"t{number:03d} T={temperature:.3g}", tags=tags)
                run_id = run.info.run_id
                sampled = {}
                if "distill.temperature" in search_space:
                    sampled["distill.temperature"] = float(temperature)
                if "distill.layer_mapping" in search_space:
                    sampled["distill.layer_mapping"] = {"strategy": mapping, "pairs": None, "groups": None}
                if "student.init.strategy" in search_space:
                    sampled["student.init.strategy"] = init
                params = {**_config_params(temperature, mapping, init, hidden, seeds[0], alpha_hard, alpha_soft),
                          "study.seeds": list(seeds), "optuna.trial_number": number,
                          "optuna.params": json.dumps(sampled)}
                param_items = [Param(k, _param(v)) for k, v in sorted(params.items())]
                metrics: list[Any] = []
                dev, test = [], []
                for index, seed in enumerate(seeds):
                    best = float(np.clip(base + rng.normal(0, noise), 0.0, 1.0))
                    test_f1 = float(np.clip(best - 0.03 + rng.normal(0, noise), 0.0, 1.0))
                    dev.append(best)
                    test.append(test_f1)
                    prefix = "" if index == 0 else f"seed{seed}_"
                    for step, value in _history(best, eval_steps, last_dev_drop, rng):
                        metrics.append(Metric(f"{prefix}dev_f1", value, now + step, step))
                        metrics.append(Metric(f"{prefix}train_loss", 1.0 / (1 + step / 50), now + step, step))
                    rows.append({"run_id": run_id, "trial_number": number, "temperature": float(temperature),
                                 "mapping": mapping, "init": init, "init_name": init_name, "setting": setting,
                                 "seed": seed, "dev_f1": best, "test_f1": test_f1,
                                 "last_dev_f1": best - last_dev_drop})
                last = 50 * eval_steps
                mean = float(np.mean(dev))
                final = {
                    "best_dev_f1": mean, "best_dev_f1_std": float(np.std(dev, ddof=1)) if len(dev) > 1 else 0.0,
                    "test_f1": float(np.mean(test)), "test_f1_std": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
                    "train_sample_f1": min(1.0, mean + 0.05), "teacher_dev_f1": teacher_dev_f1,
                    "teacher_test_f1": teacher_test_f1, "retention": mean / teacher_dev_f1,
                    "student_params": float(STUDENT_PARAMS), "teacher_params": float(TEACHER_PARAMS),
                    "compression": TEACHER_PARAMS / STUDENT_PARAMS, "tokens_per_second": 5400.0,
                    "student_sentences_per_s": 120.0 * FAKE_SPEEDUP, "teacher_sentences_per_s": 120.0,
                    "speedup": FAKE_SPEEDUP,
                    "wall_seconds": 95.0, "n_seeds": float(len(seeds)),
                    "dev_f1_PER": mean + 0.02, "dev_f1_LOC": mean + 0.01, "dev_f1_ORG": mean - 0.03,
                }
                record_tags, final = TrialRecord(
                    teacher=TEACHER, student=f"3 layers, init={init}", student_model=STUDENT_MODEL,
                    teacher_fingerprint=f"fp-{name}", dev_f1=dict(zip(seeds, dev)), test_f1=dict(zip(seeds, test)),
                    summary=final, extra_tags={"diagnosis": "ok", "diagnosis_advice": ""}).to_mlflow()
                metrics.extend(Metric(k, float(v), now + last, last) for k, v in final.items())
                if ui_dev_f1:
                    metrics.append(Metric("dev_f1", mean, now + last + 1, last + 1))
                _log_batch(client, run_id, metrics, param_items, _strings(record_tags))
                client.set_terminated(run_id, "FINISHED")
                run_ids.append(run_id)
                number += 1
    client.set_terminated(parent_id, "FINISHED")
    return FakeStudy(name=name, experiment_id=experiment_id, parent_run_id=parent_id, teacher_run_id=teacher_id,
                     trial_run_ids=run_ids, teacher_dev_f1=teacher_dev_f1, teacher_test_f1=teacher_test_f1,
                     values=pd.DataFrame(rows), search_space=search_space)


def log_unfinished_trial(tracking_uri: str, study: FakeStudy, *, state: str = "FAIL", status: str = "FAILED",
                         dev_f1: float = 0.99) -> str:
    """A trial run the report must ignore (failed / pruned / still running), with a tempting score."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    start = TrialStart(study=study.name, trial_number=999, optuna_trial_id=1000, setting="T=99 broken",
                       init=INIT_NAMES["teacher"], mapping="uniform").to_mlflow()
    run = client.create_run(study.experiment_id, run_name="t999 broken", tags={
        **_strings(start), OPTUNA_STATE: state, "teacher": TEACHER, "student_model": STUDENT_MODEL,
        PARENT_TAG: study.parent_run_id})
    client.log_batch(run.info.run_id, metrics=[Metric(seed_metric("dev_f1", 1), dev_f1, now, 0),
                                               Metric("best_dev_f1", dev_f1, now, 0)])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id
