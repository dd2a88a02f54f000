"""Benchmarks of the distillation hot path (commands, not tests). Each prints its ratios last.

    .venv/bin/python bench/distill_bench.py step     [--sentences 2000] [--steps 40]
    .venv/bin/python bench/distill_bench.py tracking [--sentences 600]
    .venv/bin/python bench/distill_bench.py memory
    .venv/bin/python bench/distill_bench.py sweep    [--sentences 2000] [--epochs 1]
    .venv/bin/python bench/distill_bench.py precision [--sentences 2000] [--steps 40]
    .venv/bin/python bench/distill_bench.py compile  [--sentences 2000] [--steps 40]
    .venv/bin/python bench/distill_bench.py speed    [--teacher mpnet-base] [--shapes 6x768,4x768,3x768,4x384]
                                                     [--precision bf16] [--sentences 256] [--repeat 5]

Data: CoNLL-2003 from $DISTILL_LAB_DATA_DIR/conll2003 when set, else the synthetic corpus.
Teacher: the packaged MiniLM-L6 (fine-tuned once, cached). `step` compares, on the SAME batches:
student-only fine-tuning, distillation with the teacher-output cache warm (soft loss + hidden loss
on 4 mapped layers, 6 -> 4), and distillation with the teacher run at every step (cache off, as
TextBrewer does when intermediate layers are matched).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _spec(sentences: int, epochs: float, layers: int = 4) -> dict:
    data_dir = os.environ.get("DISTILL_LAB_DATA_DIR")
    if data_dir:
        data = {"source": "conll", "path": f"{data_dir}/conll2003", "max_train_sentences": sentences,
                "max_eval_sentences": 1000, "max_test_sentences": 1000, "max_length": 128}
    else:
        data = {"source": "synthetic", "synthetic": {"n_train": sentences, "n_dev": 200, "n_test": 200},
                "max_length": 64}
    return {
        "name": "bench", "data": data,
        "teacher": {"model": "minilm-l6", "finetune": {"epochs": 2, "learning_rate": 1e-4, "batch_size": 32}},
        "student": {"from_teacher": {"num_layers": layers}, "init": {"strategy": "teacher"}},
        # Constant learning rate, as every figure in docs/benchmarks.md and the TextBrewer side (no scheduler):
        # the default became linear decay, which at these 63-step trials costs ~16 dev F1 points.
        "training": {"epochs": epochs, "learning_rate": 1e-4, "batch_size": 32, "eval_every": 10**6, "seed": 1,
                     "lr_schedule": "constant"},
        "distill": {"temperature": 4.0, "alpha_hard": 0.5, "alpha_soft": 0.5, "alpha_hidden": 1.0,
                    "layer_mapping": {"strategy": "uniform"}},
    }


def _setup(sentences: int, layers: int = 4):
    import torch

    from distill_lab import models
    from distill_lab.data.align import encode_sentences
    from distill_lab.data.loader import load_corpus
    from distill_lab.distill.mapping import build_mapping, teacher_layers_needed
    from distill_lab.pipeline import build_student
    from distill_lab.spec import parse_spec, resolve
    from distill_lab.teacher import prepare_teacher

    config = resolve(parse_spec(_spec(sentences, 1.0, layers)))
    corpus = load_corpus(config.data)
    teacher = prepare_teacher(config, corpus, device=torch.device("cpu"))
    label2id = {label: i for i, label in enumerate(corpus.labels)}
    split = encode_sentences(corpus.train, teacher.tokenizer, label2id, config.data.max_length)
    mapping = build_mapping("uniform", models.num_layers(teacher.model), layers)
    return config, corpus, teacher, split, mapping, teacher_layers_needed(mapping), build_student


def _time_steps(model, objective, split, batches, recipe_lr: float = 1e-4, precision: str = "fp32") -> list[float]:
    import torch

    from distill_lab.distill.engine import adamw_kernel
    from distill_lab.precision import autocast

    parameters = [p for p in model.parameters()] + (
        list(objective.projections.parameters()) if objective.projections is not None else [])
    # The optimizer every distill-lab run uses (fused AdamW kernel), so a step costs what it costs in a trial.
    optimizer = torch.optim.AdamW(parameters, lr=recipe_lr, **adamw_kernel(parameters, torch.device("cpu"), True))
    model.train()
    times = []
    for indices in batches:
        batch = split.batch(indices)
        started = time.perf_counter()
        with autocast("cpu", precision):  # as the engine does: autocast forward, fp32 losses inside
            parts = objective.losses(model, batch, torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def bench_step(args: argparse.Namespace) -> None:
    import torch

    from distill_lab.data.align import bucketed_batches
    from distill_lab.distill.engine import Objective
    from distill_lab.distill.teacher_cache import live_teacher_targets, teacher_targets
    from distill_lab.paths import home_dir

    config, corpus, teacher, split, mapping, layers, build_student = _setup(args.sentences)
    batches = bucketed_batches(split.lengths, 32, seed=1, epoch=0)[: args.steps + 3]
    started = time.perf_counter()
    cached = teacher_targets(teacher.model, split, teacher_fingerprint=teacher.fingerprint, layers=layers,
                             cache_dir=home_dir() / "teacher_outputs")
    warm_seconds = time.perf_counter() - started
    live = live_teacher_targets(teacher.model, split, layers=layers)
    results = {}
    for name, objective in (
        ("student-only", Objective(alpha_hard=1.0)),
        ("distill, cache warm", Objective(0.5, 0.5, 1.0, 0.0, 4.0, "mse", cached, mapping)),
        ("distill, teacher live", Objective(0.5, 0.5, 1.0, 0.0, 4.0, "mse", live, mapping)),
    ):
        torch.manual_seed(1)
        student, _, _ = build_student(config, teacher, corpus.labels)
        times = _time_steps(student, objective, split, batches)[3:]  # first steps warm up allocators
        results[name] = statistics.median(times)
        print(f"{name:<24} median step {results[name] * 1000:8.1f} ms over {len(times)} steps", flush=True)
    tokens = sum(int(split.batch(b)["attention_mask"].sum()) for b in batches[3:])
    print(f"teacher-output cache fill (or load): {warm_seconds:.1f} s for {len(split)} sentences")
    print(f"student-only tokens/s: {tokens / (results['student-only'] * len(batches[3:])):.0f}")
    print(f"ratio distill(cache warm) / student-only = {results['distill, cache warm'] / results['student-only']:.3f}"
          " (target <= 1.10)")
    print(f"ratio distill(teacher live) / student-only = "
          f"{results['distill, teacher live'] / results['student-only']:.3f}")


def bench_precision(args: argparse.Namespace) -> None:
    """bf16 autocast vs fp32 on the same batches: the teacher fine-tune's step (6 layers, CE) and a
    3-layer student's distillation step (soft + hard loss, teacher-output cache warm)."""
    import torch

    from distill_lab import models
    from distill_lab.data.align import bucketed_batches
    from distill_lab.distill.engine import Objective
    from distill_lab.distill.teacher_cache import teacher_targets
    from distill_lab.paths import home_dir

    config, corpus, teacher, split, _, _, build_student = _setup(args.sentences, 3)
    batches = bucketed_batches(split.lengths, 32, seed=1, epoch=0)[: args.steps + 3]
    cached = teacher_targets(teacher.model, split, teacher_fingerprint=teacher.fingerprint, layers=(),
                             cache_dir=home_dir() / "teacher_outputs")
    medians = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        fine_tune = models.token_classifier_from_backbone(teacher.ref, corpus.labels)
        medians["teacher fine-tune", precision] = statistics.median(
            _time_steps(fine_tune, Objective(alpha_hard=1.0), split, batches, precision=precision)[3:])
        torch.manual_seed(1)
        student, _, _ = build_student(config, teacher, corpus.labels)
        medians["3-layer student, KD", precision] = statistics.median(
            _time_steps(student, Objective(alpha_hard=0.2, alpha_soft=0.8, temperature=8.0, teacher=cached),
                        split, batches, precision=precision)[3:])
    for name in ("teacher fine-tune", "3-layer student, KD"):
        print(f"{name:<22} median step fp32 {medians[name, 'fp32'] * 1000:7.1f} ms, bf16 "
              f"{medians[name, 'bf16'] * 1000:7.1f} ms over {args.steps} steps")
    for name in ("teacher fine-tune", "3-layer student, KD"):
        print(f"ratio bf16 / fp32 step, {name} = {medians[name, 'bf16'] / medians[name, 'fp32']:.3f} (target <= 0.6)")


def bench_compile(args: argparse.Namespace) -> None:
    """torch.compile on CPU for a 3-layer student's KD steps, compile time included, at the trial
    lengths the studies use; eager and compiled models start from the same weights and batches."""
    import torch

    from distill_lab.data.align import bucketed_batches
    from distill_lab.distill.engine import Objective
    from distill_lab.distill.teacher_cache import teacher_targets
    from distill_lab.paths import home_dir

    config, corpus, teacher, split, _, _, build_student = _setup(args.sentences, 3)
    batches = bucketed_batches(split.lengths, 32, seed=1, epoch=0)[: args.steps]
    cached = teacher_targets(teacher.model, split, teacher_fingerprint=teacher.fingerprint, layers=(),
                             cache_dir=home_dir() / "teacher_outputs")
    objective = Objective(alpha_hard=0.2, alpha_soft=0.8, temperature=8.0, teacher=cached)
    runs = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(1)
        student, _, _ = build_student(config, teacher, corpus.labels)
        model = torch.compile(student, dynamic=True) if name == "compiled" else student
        runs[name] = _time_steps(model, objective, split, batches)
        print(f"{name:<9} first step {runs[name][0]:6.2f} s, then median {statistics.median(runs[name][1:]) * 1000:6.1f} ms"
              f" ({len(batches)} length-bucketed batches)", flush=True)
    for steps in (63, 126, 1317):  # a 2,000-sentence epoch, the 2-epoch studies, the full-set headline
        totals = {name: times[0] + statistics.median(times[1:]) * (steps - 1) for name, times in runs.items()}
        print(f"ratio compiled / eager for a {steps}-step trial (compile included) = "
              f"{totals['compiled'] / totals['eager']:.3f}")


def _trial_seconds(tracking: bool, sentences: int, after_tell: bool = True) -> tuple[float, float]:
    """A quickstart-sized trial with or without MLflow tracking, in a fresh process.

    Returns (first trial, next trial): a study's worker pays its one-off costs (imports, the
    first store connection) on its first trial; every later trial costs the second figure.
    A tracked trial is run as a worker runs it: the value told to Optuna, then (`after_tell`) its
    artifacts handed to the background writer, which the next trial overlaps; or (not
    `after_tell`) written before the value is returned, as before the writer existed.
    """
    code = f"""
import os, sys, time, tempfile, json
sys.path.insert(0, {str(ROOT)!r})
from distill_lab.spec import parse_spec
from distill_lab import study as driver
from distill_lab.pipeline import run_distillation
from distill_lab.spec import resolve
import bench.distill_bench as b
spec = parse_spec(b._spec({sentences}, 1.0, 3) | {{"distill": {{"alpha_hidden": 0.0}},
                  "training": {{"epochs": 1, "eval_every": 5, "seed": 1, "learning_rate": 1e-4, "batch_size": 32}}}})
run_distillation(resolve(spec))  # warm: teacher and caches, not timed
started = time.perf_counter()
if {tracking}:
    import optuna
    tmp = tempfile.mkdtemp()
    ctx = driver.StudyContext(spec, tmp + "/o.journal", "sqlite:///" + tmp + "/m.db", 1, 6, 3)
    storage = driver.open_storage(ctx.storage_url)
    s = driver.create_or_load(ctx, storage)
    from distill_lab.tracking import Tracker
    tracker = Tracker(ctx.tracking_uri)
    exp, parent = driver.ensure_tracking(ctx, s, tracker)
    from distill_lab.study.background import BackgroundWriter
    writer = BackgroundWriter()
    for _ in range(2):
        started = time.perf_counter()
        trial, jobs = s.ask(), []
        value = driver.run_trial(trial, ctx, tracker, exp, parent, defer=jobs.append if {after_tell} else None)
        s.tell(trial, value)
        for job in jobs:
            writer.submit(job)
        print("SECONDS", time.perf_counter() - started)
    writer.drain()
else:
    from distill_lab.study.objective import corpus_for  # a worker's shared corpus, as the tracked side
    for _ in range(2):
        started = time.perf_counter()
        run_distillation(resolve(spec), corpus=corpus_for(resolve(spec)))
        print("SECONDS", time.perf_counter() - started)
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    first, second = [float(line.split()[1]) for line in output.splitlines() if line.startswith("SECONDS")][-2:]
    return first, second


def bench_tracking(args: argparse.Namespace) -> None:
    # Interleaved, so a drift of the machine's speed touches every variant alike.
    variants = {"without tracking": (False, True), "tracked, artifacts after the tell": (True, True),
                "tracked, artifacts inline": (True, False)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, (tracking, after_tell) in variants.items():
            runs[name].append(_trial_seconds(tracking, args.sentences, after_tell))
    for name, times in runs.items():
        print(f"trial {name}: first in its process median {statistics.median(r[0] for r in times):.2f} s, "
              f"next median {statistics.median(r[1] for r in times):.2f} s {['%.2f' % r[1] for r in times]}")
    off = runs["without tracking"]
    for name in list(variants)[1:]:
        on = runs[name]
        first = statistics.median(r[0] for r in on) / statistics.median(r[0] for r in off) - 1
        following = statistics.median(r[1] for r in on) / statistics.median(r[1] for r in off) - 1
        print(f"{name}: overhead of a worker's first trial = {first * 100:.1f}% (imports and store set-up "
              f"included); per later trial = {following * 100:.1f}% (target <= 2%)")


def _peak_rss(cache: str) -> float:
    code = f"""
import sys, resource
sys.path.insert(0, {str(ROOT)!r})
from distill_lab.spec import load_spec, resolve
from distill_lab.pipeline import run_distillation
config = resolve(load_spec({str(ROOT / 'studies' / 'quickstart.yaml')!r}, ["training.teacher_cache={cache}",
                 "distill.alpha_hidden=1.0", "training.epochs=1"]))
run_distillation(config)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return float([line for line in output.splitlines() if line.startswith("RSS")][-1].split()[1]) / 1024


def bench_memory(args: argparse.Namespace) -> None:
    without = _peak_rss("off")
    with_cache = _peak_rss("memory")
    print(f"peak RSS of a quickstart trial (hidden loss on): cache off {without:.0f} MB, cache on {with_cache:.0f} MB")
    print(f"ratio peak RSS cache/no cache = {with_cache / without:.3f} (target <= 1.5)")


def bench_sweep(args: argparse.Namespace) -> None:
    """9 temperatures x 2 seeds: one sweep with the cache vs the same trials each re-running the teacher."""
    from distill_lab.distill.teacher_cache import clear_memory
    from distill_lab.pipeline import run_distillation
    from distill_lab.spec import parse_spec, resolve

    temperatures = [1, 2, 3, 4, 6, 8, 12, 16, 24]
    timings = {}
    for mode in ("memory", "off"):
        clear_memory()
        started = time.perf_counter()
        for temperature in temperatures:
            for seed in (1, 2):
                spec = _spec(args.sentences, args.epochs, 3) | {"distill": {"temperature": temperature,
                                                                            "alpha_hard": 0.5, "alpha_soft": 0.5}}
                spec["training"] |= {"seed": seed, "teacher_cache": mode}
                run_distillation(resolve(parse_spec(spec)))
        timings[mode] = time.perf_counter() - started
        print(f"sweep of 18 trials, teacher cache {mode}: {timings[mode]:.1f} s", flush=True)
    print(f"ratio sweep(cache) / sweep(teacher every step) = {timings['memory'] / timings['off']:.3f} "
          "(target <= 0.5 vs TextBrewer loop)")


def _speed_shape(text: str) -> tuple[int, int]:
    layers, _, width = text.partition("x")
    return int(layers), int(width)


def bench_speed(args: argparse.Namespace) -> None:
    """Inference speed of student shapes against their teacher, measured once on a quiet machine.

    A study times each run's student while its other workers train, so the report's speedup column
    carries their load (one 3-layer cell read 2.93x-4.47x). Speed depends on the shape, not the
    weights: each student here is the teacher's config cut to L layers of width W (heads W/64,
    intermediate 4W), random weights, the run's code path (`distill_lab.speed.measure`: the same
    dev sentences at batch 32, student and teacher passes alternating, median of --repeat passes).
    """
    import torch

    from distill_lab import models
    from distill_lab.data.align import encode_sentences
    from distill_lab.data.loader import load_corpus
    from distill_lab.spec import parse_spec, resolve
    from distill_lab.speed import measure

    spec = _spec(200, 1.0)
    spec["teacher"]["model"] = args.teacher
    spec["data"].pop("max_train_sentences", None)
    config = resolve(parse_spec(spec))
    corpus = load_corpus(config.data)
    ref = models.resolve_reference(args.teacher)
    teacher_config = models.load_config(ref)
    tokenizer = models.load_tokenizer(ref, teacher_config.model_type)
    dev = encode_sentences(corpus.dev, tokenizer, {label: i for i, label in enumerate(corpus.labels)},
                           config.data.max_length)
    teacher = models.token_classifier_from_backbone(ref, corpus.labels)
    n_teacher, width = models.num_layers(teacher_config), models.hidden_width(teacher_config)
    print(f"teacher {args.teacher}: {n_teacher} x {width}, {models.count_parameters(teacher) / 1e6:.1f}M params; "
          f"{min(args.sentences, len(dev))} dev sentences, batch 32, {args.precision}, {args.repeat} passes each",
          flush=True)
    rows = []
    for layers, hidden in map(_speed_shape, args.shapes.split(",")):
        student_config = models.student_config_from_teacher(
            teacher_config, num_layers=layers, hidden_size=None if hidden == width else hidden,
            num_attention_heads=None if hidden == width else hidden // 64,
            intermediate_size=None if hidden == width else 4 * hidden)
        torch.manual_seed(0)
        student = models.token_classifier_from_config(student_config, corpus.labels)
        speed = measure(student, teacher, dev, dev, sentences=args.sentences, device=torch.device("cpu"),
                        precision=args.precision, passes=args.repeat)
        rows.append((f"{layers} x {hidden}", models.count_parameters(student), speed))
        print(f"student {layers} x {hidden}: {speed.student_sentences_per_s:7.1f} sentences/s, teacher "
              f"{speed.teacher_sentences_per_s:7.1f}: speedup {speed.speedup:.2f}x", flush=True)
    print("\n| student | params | sentences/s | teacher sentences/s (same passes) | speedup |\n|---|---|---|---|---|")
    for shape, params, speed in rows:
        print(f"| {shape} | {params / 1e6:.1f}M | {speed.student_sentences_per_s:.1f} | "
              f"{speed.teacher_sentences_per_s:.1f} | {speed.speedup:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["step", "tracking", "memory", "sweep", "precision", "compile",
                                                         "speed"])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default="mpnet-base", help="speed: the teacher model (an alias or path)")
    parser.add_argument("--shapes", default="6x768,4x768,3x768,4x384", help="speed: student LAYERSxWIDTH, comma-separated")
    parser.add_argument("--precision", default="bf16", help="speed: fp32 or bf16")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}; "
          f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    {"step": bench_step, "tracking": bench_tracking, "memory": bench_memory, "sweep": bench_sweep,
     "precision": bench_precision, "compile": bench_compile, "speed": bench_speed}[args.command](args)


if __name__ == "__main__":
    tempfile.gettempdir()
    main()
