"""Where a trial's time goes: each stage's share, for a worker's first trial and a later one.

    .venv/bin/python bench/trial_breakdown.py [--spec studies/quickstart.yaml] [--trials 3] [--set KEY=VALUE ...]

Runs `run_distillation` in one process the way a study worker does (one corpus shared by its
trials), with the pipeline's stages wrapped in timers: teacher (fine-tune or load), student build,
tokenising, teacher outputs (the cache fill), training steps, dev evaluations during training,
final scoring (dev, test, train sample), inference-speed timing. Tracking is `bench/distill_bench.py
tracking`'s job and is not included. A benchmark command, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = {  # (module, function) -> stage name
    ("pipeline", "prepare_teacher"): "teacher fine-tune / load",
    ("pipeline", "build_student"): "student build (init copy)",
    ("pipeline", "_encode"): "tokenise splits",
    ("pipeline", "_objective"): "teacher outputs (cache fill)",
    ("engine", "_evaluate"): "dev evaluations during training",
    ("pipeline", "_score"): "final scoring (dev, test, train sample)",
    ("pipeline", "_speed"): "inference-speed timing",
}


def _timed(times: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[name] += time.perf_counter() - started
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "studies" / "quickstart.yaml"))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from distill_lab import pipeline
    from distill_lab.data.loader import load_corpus
    from distill_lab.distill import engine
    from distill_lab.spec import load_spec, resolve

    times: dict[str, float] = defaultdict(float)
    modules = {"pipeline": pipeline, "engine": engine}
    for (module, function), name in STAGES.items():
        setattr(modules[module], function, _timed(times, name, getattr(modules[module], function)))
    config = resolve(load_spec(Path(args.spec), args.overrides))
    started = time.perf_counter()
    corpus = load_corpus(config.data)
    read = time.perf_counter() - started
    rows = []
    for trial in range(args.trials):
        times.clear()
        started = time.perf_counter()
        pipeline.run_distillation(config, corpus=corpus)
        total = time.perf_counter() - started + (read if trial == 0 else 0.0)
        stages = dict(times)
        if trial == 0:
            stages["read the corpus (once per worker)"] = read
        # Training = the train loop minus its dev evaluations (the loop is not wrapped itself).
        stages["training steps"] = total - sum(stages.values())
        rows.append((total, stages))
        print(f"trial {trial + 1}: {total:.2f} s", flush=True)
    names = ["read the corpus (once per worker)", *STAGES.values(), "training steps"]
    print(f"\n| stage | first trial | share | later trial (median of {args.trials - 1}) | share |")
    print("|---|---|---|---|---|")
    later = rows[1:] or rows
    for name in names:
        first = rows[0][1].get(name, 0.0)
        values = sorted(stages.get(name, 0.0) for _, stages in later)
        median = values[len(values) // 2]
        later_total = sorted(total for total, _ in later)[len(later) // 2]
        print(f"| {name} | {first:.2f} s | {first / rows[0][0] * 100:.1f} % | {median:.2f} s | "
              f"{median / later_total * 100:.1f} % |")
    print(f"| **trial** | **{rows[0][0]:.2f} s** | 100 % | **{sorted(t for t, _ in later)[len(later) // 2]:.2f} s** | 100 % |")


if __name__ == "__main__":
    main()
