"""distill-lab against TextBrewer's GeneralDistiller, side by side in one process (a command, not a test).

    .venv/bin/pip install -e ".[bench]"        # textbrewer (+ tensorboardX, which it imports)
    DISTILL_LAB_DATA_DIR=../shared/data .venv/bin/python bench/textbrewer_bench.py epoch [--epochs 1]
    DISTILL_LAB_DATA_DIR=../shared/data .venv/bin/python bench/textbrewer_bench.py sweep [--epochs 1]
    cd results && DISTILL_LAB_DATA_DIR=../../shared/data ../.venv/bin/python ../bench/textbrewer_bench.py recipe

`epoch`: CoNLL-2003 first 2,000 train sentences, MiniLM-L6 teacher (fine-tuned once, cached) ->
4-layer student (teacher init), soft loss (T=4) + hidden-state MSE on the 4 uniformly mapped
layers + hard loss, AdamW lr 1e-4, grad clip 1.0, batch 32. Both trainers get the SAME batches in
the SAME order (distill-lab's length-bucketed batches) and the same loss (TextBrewer's CE at T
weighted by T^2 has the gradient of distill-lab's KL x T^2). distill-lab uses its teacher-output
cache (its one-off fill is printed apart); TextBrewer runs the teacher at every step, as it does
whenever intermediate layers are matched. Both students are scored with the same seqeval code.

`sweep`: T in {1, 2, 3, 4, 6, 8, 12, 16, 24} x seeds {1, 2}, logits-only KD, 3-layer student:
distill-lab's trials (`run_distillation`, cache in memory across trials) vs the same 18 trials as a
loop of TextBrewer runs (each re-running its teacher), each scored on dev, test and the train sample.

`recipe`: TextBrewer's own CoNLL-2003 recipe (its examples/conll2003_example: run_ner_distill.py and
run_conll2003_distill_T3.sh) on the teacher of a study spec (--spec, default
studies/headline_teacher.yaml; fine-tuned once and cached, shared with the study through
DISTILL_LAB_HOME, so run it where the study ran): the student is the fine-tuned teacher cut to its
first 3 layers (classifier kept), GeneralDistiller with DistillationConfig(temperature=8) and nothing
else (soft cross-entropy only, no hard loss, no T^2 factor) over every attended sub-token, AdamW with
no weight decay, linear warmup over 10 % then linear decay, no gradient clipping, batch 32 in random
order, 2 epochs at lr 1e-4 (the script's values; --epochs / --lr change them). Beside it, per seed,
its no-KD twin: the same student, batches, optimizer, schedule and budget with gold cross-entropy
only. Scored with distill-lab's seqeval code on the full dev and test sets; each seed of each arm is
one MLflow run with role `reference` in experiment `textbrewer_recipe` (--experiment), which
`distill-lab report` shows as its own study, KD vs twin compared like a study's arms.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.distill_bench import _spec  # noqa: E402  (one data/model recipe for every benchmark)

TEMPERATURES = [1, 2, 3, 4, 6, 8, 12, 16, 24]


def _textbrewer():
    try:
        import textbrewer
    except ImportError as err:
        raise SystemExit(f"textbrewer is not installed ({err}): .venv/bin/pip install -e '.[bench]'") from None
    logging.getLogger("textbrewer").setLevel(logging.WARNING)
    logging.getLogger("Distillation").setLevel(logging.WARNING)
    return textbrewer


class WordLevel:
    """Wraps a token classifier so TextBrewer sees word-level logits (first sub-token of each word).

    TextBrewer calls `model(**batch)`; distill-lab's batches also carry word positions and word-level
    labels, so the wrapper takes them, gathers the word logits and computes the hard loss the same
    way distill-lab's objective does.
    """

    def __new__(cls, model, hidden: bool):
        import torch

        from distill_lab.data.align import gather_words
        from distill_lab.distill import losses

        class _Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, word_positions, word_mask, labels, index=None):
                outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
                word_logits = gather_words(outputs.logits, word_positions)
                return {"logits": word_logits, "hidden": outputs.hidden_states, "word_mask": word_mask,
                        "attention_mask": attention_mask, "loss": losses.hard_loss(word_logits, labels)}

        return _Wrapped()


def _adaptor(batch, outputs):
    adapted = {"logits": [outputs["logits"]], "logits_mask": [outputs["word_mask"]],
               "inputs_mask": outputs["attention_mask"], "losses": [outputs["loss"]]}
    if outputs["hidden"] is not None:
        adapted["hidden"] = list(outputs["hidden"])
    return adapted


def textbrewer_train(teacher, student, batches, *, temperature: float, alpha_hard: float, alpha_soft: float,
                     alpha_hidden: float, mapping, learning_rate: float = 1e-4, fused: bool = True) -> float:
    """Train `student` with TextBrewer's GeneralDistiller on `batches`; returns wall seconds.

    The optimizer is the caller's in TextBrewer: `fused` gives it distill-lab's (fused AdamW kernel),
    `fused=False` PyTorch's default per-parameter AdamW.
    """
    import torch

    textbrewer = _textbrewer()
    from distill_lab.distill.engine import adamw_kernel
    from distill_lab.distill.mapping import hidden_index

    hidden = alpha_hidden > 0
    # distill-lab averages the hidden loss over mapped layers; TextBrewer sums weighted matches.
    matches = [{"layer_T": hidden_index(group[0]), "layer_S": hidden_index(student_layer), "feature": "hidden",
                "loss": "hidden_mse", "weight": alpha_hidden / len(mapping)}
               for group, student_layer in mapping] if hidden else []
    output_dir = tempfile.mkdtemp(prefix="textbrewer-")
    train_config = textbrewer.TrainingConfig(device="cpu", log_dir=None, output_dir=output_dir,
                                             ckpt_steps=len(batches))
    distill_config = textbrewer.DistillationConfig(
        temperature=temperature, kd_loss_type="ce", kd_loss_weight=alpha_soft * temperature ** 2,
        hard_label_weight=alpha_hard, intermediate_matches=matches)
    model_t, model_s = WordLevel(teacher, hidden), WordLevel(student, hidden)
    model_t.eval()
    distiller = textbrewer.GeneralDistiller(train_config, distill_config, model_t, model_s, _adaptor, _adaptor)
    parameters = list(student.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01,
                                  **adamw_kernel(parameters, torch.device("cpu"), fused))
    started = time.perf_counter()
    with distiller:
        distiller.train(optimizer, batches, num_epochs=1, num_steps=len(batches), max_grad_norm=1.0)
    seconds = time.perf_counter() - started
    for leftover in Path(output_dir).glob("*.pkl"):  # its end-of-training checkpoint
        leftover.unlink()
    student.eval()
    return seconds


def _setup(sentences: int, layers: int):
    import torch

    from distill_lab import models
    from distill_lab.data.align import encode_sentences
    from distill_lab.data.loader import load_corpus
    from distill_lab.distill.mapping import build_mapping
    from distill_lab.spec import parse_spec, resolve
    from distill_lab.teacher import prepare_teacher

    config = resolve(parse_spec(_spec(sentences, 1.0, layers)))
    corpus = load_corpus(config.data)
    teacher = prepare_teacher(config, corpus, device=torch.device("cpu"))
    teacher.model.eval()
    label2id = {label: i for i, label in enumerate(corpus.labels)}
    split = encode_sentences(corpus.train, teacher.tokenizer, label2id, config.data.max_length)
    dev = encode_sentences(corpus.dev, teacher.tokenizer, label2id, config.data.max_length)
    mapping = build_mapping("uniform", models.num_layers(teacher.model), layers)
    return config, corpus, teacher, split, dev, mapping


def bench_epoch(args: argparse.Namespace) -> None:
    import torch

    from distill_lab.data.align import bucketed_batches
    from distill_lab.distill.engine import Objective, TrainRecipe, train
    from distill_lab.distill.mapping import teacher_layers_needed
    from distill_lab.distill.teacher_cache import teacher_targets
    from distill_lab.evaluation import evaluate
    from distill_lab.pipeline import build_student

    config, corpus, teacher, split, dev, mapping = _setup(args.sentences, 4)
    per_epoch = math.ceil(len(split) / 32)
    steps = int(args.epochs * per_epoch)
    order = [b for epoch in range(math.ceil(args.epochs)) for b in bucketed_batches(split.lengths, 32, seed=1,
                                                                                      epoch=epoch)][:steps]
    recipe = TrainRecipe(epochs=args.epochs, learning_rate=1e-4, batch_size=32, warmup_ratio=0.0, seed=1,
                         eval_every=10 ** 9, lr_schedule="constant")
    seconds, f1 = {}, {}
    for name in ("distill-lab", "TextBrewer", "TextBrewer, default AdamW"):
        torch.manual_seed(1)
        student, _, _ = build_student(config, teacher, corpus.labels)
        if name == "distill-lab":
            started = time.perf_counter()
            targets = teacher_targets(teacher.model, split, teacher_fingerprint=teacher.fingerprint,
                                      layers=teacher_layers_needed(mapping))
            fill = time.perf_counter() - started
            objective = Objective(0.5, 0.5, 1.0, 0.0, 4.0, "mse", targets, mapping)
            started = time.perf_counter()
            train(student, split, dev, corpus.labels, recipe, objective)  # its own bucketed order, seed 1
            seconds[name] = time.perf_counter() - started
            print(f"distill-lab teacher-output cache fill: {fill:.1f} s (once per sweep)", flush=True)
        else:
            started = time.perf_counter()
            textbrewer_train(teacher.model, student, [split.batch(b) for b in order], temperature=4.0,
                             alpha_hard=0.5, alpha_soft=0.5, alpha_hidden=1.0, mapping=mapping,
                             fused=name == "TextBrewer")
            evaluate(student, dev, corpus.labels)  # distill-lab's train() ends with one dev evaluation too
            seconds[name] = time.perf_counter() - started
        f1[name] = evaluate(student, dev, corpus.labels)[0].f1 * 100
        print(f"{name:<26} {steps} steps: {seconds[name]:7.1f} s   dev F1 {f1[name]:.2f}", flush=True)
    print(f"dev F1 difference distill-lab - TextBrewer = {f1['distill-lab'] - f1['TextBrewer']:+.2f} "
          "(target >= -0.5)")
    print(f"ratio epoch time distill-lab / TextBrewer with its default AdamW = "
          f"{seconds['distill-lab'] / seconds['TextBrewer, default AdamW']:.3f}")
    print(f"ratio epoch time distill-lab / TextBrewer, same optimizer = "
          f"{seconds['distill-lab'] / seconds['TextBrewer']:.3f} (target <= 0.70)")


def _textbrewer_trial(temperature: float, seed: int, sentences: int, epochs: float) -> float:
    """One sweep trial the TextBrewer way: teacher forward at every step, then the same scoring."""
    import torch

    from distill_lab.data.align import bucketed_batches, encode_sentences
    from distill_lab.data.loader import load_corpus
    from distill_lab.evaluation import evaluate
    from transformers import set_seed as seed_everything

    from distill_lab.pipeline import _train_sample, build_student
    from distill_lab.spec import parse_spec, resolve
    from distill_lab.teacher import prepare_teacher

    spec = _spec(sentences, epochs, 3) | {"distill": {"temperature": temperature, "alpha_hard": 0.5,
                                                      "alpha_soft": 0.5}}
    spec["training"] |= {"seed": seed}
    config = resolve(parse_spec(spec))
    seed_everything(seed)
    corpus = load_corpus(config.data)
    teacher = prepare_teacher(config, corpus, device=torch.device("cpu"))
    teacher.model.eval()
    student, tokenizer, _ = build_student(config, teacher, corpus.labels)
    label2id = {label: i for i, label in enumerate(corpus.labels)}
    encode = lambda sentences: encode_sentences(sentences, tokenizer, label2id, config.data.max_length)  # noqa: E731
    train_split, dev, test = encode(corpus.train), encode(corpus.dev), encode(corpus.test)
    steps = int(epochs * math.ceil(len(train_split) / 32))
    order = [b for epoch in range(math.ceil(epochs))
             for b in bucketed_batches(train_split.lengths, 32, seed=seed, epoch=epoch)][:steps]
    textbrewer_train(teacher.model, student, [train_split.batch(b) for b in order], temperature=temperature,
                     alpha_hard=0.5, alpha_soft=0.5, alpha_hidden=0.0, mapping=())
    dev_scores, _ = evaluate(student, dev, corpus.labels)
    evaluate(student, test, corpus.labels)
    evaluate(student, _train_sample(train_split, config.data.train_sample_size, seed), corpus.labels)
    return dev_scores.f1


def bench_sweep(args: argparse.Namespace) -> None:
    from distill_lab.distill.teacher_cache import clear_memory
    from distill_lab.pipeline import run_distillation
    from distill_lab.spec import parse_spec, resolve

    _textbrewer()
    # Warm the fine-tuned teacher on disk first: neither side pays for the one-off fine-tune.
    run_distillation(resolve(parse_spec(_spec(args.sentences, 0.05, 3))))
    clear_memory()
    timings, scores = {}, {"distill-lab": [], "TextBrewer": []}
    started = time.perf_counter()
    for temperature in TEMPERATURES:
        for seed in (1, 2):
            spec = _spec(args.sentences, args.epochs, 3) | {"distill": {"temperature": temperature,
                                                                        "alpha_hard": 0.5, "alpha_soft": 0.5}}
            spec["training"] |= {"seed": seed, "teacher_cache": "memory", "warmup_ratio": 0.0}
            scores["distill-lab"].append(run_distillation(resolve(parse_spec(spec))).dev.f1)
    timings["distill-lab"] = time.perf_counter() - started
    print(f"sweep of 18 trials, distill-lab (teacher-output cache): {timings['distill-lab']:.1f} s", flush=True)
    started = time.perf_counter()
    for temperature in TEMPERATURES:
        for seed in (1, 2):
            scores["TextBrewer"].append(_textbrewer_trial(temperature, seed, args.sentences, args.epochs))
    timings["TextBrewer"] = time.perf_counter() - started
    print(f"sweep of 18 trials, loop of TextBrewer runs: {timings['TextBrewer']:.1f} s", flush=True)
    for name, values in scores.items():
        print(f"{name:<12} mean dev F1 over the 18 trials {statistics.fmean(values) * 100:.2f}")
    print(f"ratio sweep distill-lab / TextBrewer loop = {timings['distill-lab'] / timings['TextBrewer']:.3f} "
          "(target <= 0.5)")


class TokenLevel:
    """TextBrewer's CoNLL example feeds the distiller token-level logits masked by the attention mask."""

    def __new__(cls, model):
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, **_):
                outputs = self.model(input_ids=input_ids, attention_mask=attention_mask)
                return {"logits": outputs.logits, "mask": attention_mask}

        return _Wrapped()


def _token_adaptor(batch, outputs):
    return {"logits": [outputs["logits"]], "logits_mask": [outputs["mask"]]}


def _recipe_setup(args: argparse.Namespace, seed: int):
    import torch

    from distill_lab import precision
    from distill_lab.data.align import encode_sentences
    from distill_lab.data.loader import load_corpus
    from transformers import set_seed as seed_everything

    from distill_lab.pipeline import build_student
    from distill_lab.spec import load_spec, resolve
    from distill_lab.teacher import prepare_teacher

    spec = load_spec(Path(args.spec), ["student.init={strategy: teacher, layers: first}",
                                       "student.from_teacher.num_layers=3", f"training.seed={seed}", *args.overrides])
    config = resolve(spec)
    corpus = load_corpus(config.data)
    # The spec's teacher, fine-tuned once and cached (shared with the study through DISTILL_LAB_HOME).
    device = torch.device("cpu")
    # The precision is part of the teacher's fingerprint: resolve it as the study does to reuse its teacher.
    teacher = prepare_teacher(config, corpus, device=device, precision=precision.resolve(config.training.precision, device))
    teacher.model.eval()
    seed_everything(seed)
    student, tokenizer, init = build_student(config, teacher, corpus.labels)
    label2id = {label: i for i, label in enumerate(corpus.labels)}
    encode = lambda sentences: encode_sentences(sentences, tokenizer, label2id, config.data.max_length)  # noqa: E731
    splits = encode(corpus.train), encode(corpus.dev), encode(corpus.test)
    return config, corpus, teacher, student, init, splits


def _recipe_batches(train_split, epochs: float, seed: int, batch_size: int = 32) -> list:
    """RandomSampler order, a new permutation each epoch, cut to `epochs` worth of steps."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(math.ceil(epochs)):
        order = torch.randperm(len(train_split), generator=generator).tolist()
        batches += [train_split.batch(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    return batches[:int(epochs * math.ceil(len(train_split) / batch_size))]


def _train_textbrewer(teacher_model, student, batches: list, optimizer, scheduler_args: dict) -> None:
    from transformers import get_linear_schedule_with_warmup

    textbrewer = _textbrewer()
    output_dir = tempfile.mkdtemp(prefix="textbrewer-")
    train_config = textbrewer.TrainingConfig(device="cpu", log_dir=None, output_dir=output_dir,
                                             ckpt_steps=len(batches))
    distill_config = textbrewer.DistillationConfig(temperature=8)
    distiller = textbrewer.GeneralDistiller(train_config, distill_config, TokenLevel(teacher_model),
                                            TokenLevel(student), _token_adaptor, _token_adaptor)
    with distiller:
        distiller.train(optimizer, batches, num_steps=len(batches), scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args=scheduler_args)
    for leftover in Path(output_dir).glob("*.pkl"):
        leftover.unlink()


def _train_twin(student, batches: list, optimizer, scheduler_args: dict) -> None:
    """The no-KD twin: the same student, batches, optimizer and schedule, gold cross-entropy only
    (at each word's first sub-token, as HF run_ner.py labels them), no gradient clipping."""
    from transformers import get_linear_schedule_with_warmup

    from distill_lab.data.align import gather_words
    from distill_lab.distill.losses import hard_loss

    scheduler = get_linear_schedule_with_warmup(optimizer, **scheduler_args)
    student.train()
    for batch in batches:
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = hard_loss(gather_words(logits, batch["word_positions"]), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def _recipe_run(args: argparse.Namespace, seed: int, twin: bool) -> dict:
    import torch

    from distill_lab import models
    from distill_lab.evaluation import evaluate

    config, corpus, teacher, student, init, (train_split, dev, test) = _recipe_setup(args, seed)
    print(f"teacher dev F1 {teacher.dev_f1 * 100:.2f} ({'cached' if teacher.reused else 'fine-tuned'}, "
          f"fingerprint {teacher.fingerprint[:12]}); student {init.strategy} init, layers "
          f"{[source for _, source in init.layer_pairs]}", flush=True)
    batches = _recipe_batches(train_split, args.epochs, seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0, eps=1e-8)
    scheduler_args = {"num_warmup_steps": int(0.1 * len(batches)), "num_training_steps": len(batches)}
    started = time.perf_counter()
    if twin:
        _train_twin(student, batches, optimizer, scheduler_args)
    else:
        _train_textbrewer(teacher.model, student, batches, optimizer, scheduler_args)
    seconds = time.perf_counter() - started
    student.eval()
    dev_scores, _ = evaluate(student, dev, corpus.labels)
    test_scores, _ = evaluate(student, test, corpus.labels)
    name = "no-KD twin (CE only)" if twin else "TextBrewer CoNLL recipe"
    print(f"{name}, seed {seed}, {len(batches)} steps ({args.epochs:g} epochs, lr {args.lr:g}): dev F1 "
          f"{dev_scores.f1 * 100:.2f}  test F1 {test_scores.f1 * 100:.2f}  train {seconds:.0f} s", flush=True)
    return {"config": config, "teacher": teacher, "student": student, "init": init, "steps": len(batches),
            "dev": dev_scores.f1, "test": test_scores.f1, "seconds": seconds,
            "student_params": models.count_parameters(student), "teacher_params": models.count_parameters(teacher.model)}


def _track(tracker, experiment_id: str, args: argparse.Namespace, seed: int, twin: bool, result: dict) -> str:
    """One MLflow run per seed, role `reference`: the report shows it beside the study's trials."""
    from distill_lab import models, naming
    from distill_lab.record_schema import REFERENCE, ROLE, STUDY_TAG, TrialRecord

    teacher = result["teacher"]
    layers = models.num_layers(result["student"])
    setting = ("TextBrewer twin: CE only" if twin
               else "TextBrewer recipe: T=8 soft CE, all sub-tokens")
    tags, metrics = TrialRecord(
        teacher=naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
        student=naming.student_name(layers, result["init"].strategy),
        student_model=naming.student_model_name(result["config"], teacher.ref.display_name, layers),
        teacher_fingerprint=teacher.fingerprint, dev_f1={seed: result["dev"]}, test_f1={seed: result["test"]},
        summary={"best_dev_f1": result["dev"], "test_f1": result["test"], "dev_f1": result["dev"],
                 "teacher_dev_f1": teacher.dev_f1, "teacher_test_f1": teacher.test_f1,
                 "student_params": result["student_params"], "teacher_params": result["teacher_params"],
                 "compression": result["teacher_params"] / result["student_params"],
                 "wall_seconds": result["seconds"], "steps": result["steps"]},
        extra_tags={"setting": setting, "init": naming.init_name(result["config"]),
                    "reference_of": "TextBrewer examples/conll2003_example (run_conll2003_distill_T3.sh)"},
    ).to_mlflow()
    tags.update({ROLE: REFERENCE, STUDY_TAG: args.experiment})
    with tracker.run(experiment_id, f"{'twin' if twin else 'textbrewer'} seed {seed}", tags=tags) as run:
        run.log_params({"distill.temperature": 1.0 if twin else 8.0, "distill.alpha_hard": 1.0 if twin else 0.0,
                        "distill.alpha_soft": 0.0 if twin else 1.0, "distill.soft_positions": "all_subtokens",
                        "training.learning_rate": args.lr, "training.epochs": args.epochs,
                        "training.batch_size": 32, "training.weight_decay": 0.0, "training.lr_schedule": "linear",
                        "training.max_grad_norm": "none", "training.seed": seed, "spec": str(args.spec)})
        run.log_metrics(metrics, step=result["steps"])
        return run.run_id


def _track_teacher(tracker, experiment_id: str, args: argparse.Namespace, teacher) -> None:
    from distill_lab import models, naming
    from distill_lab.record_schema import ROLE, TEACHER, TEACHER_FINGERPRINT, TeacherRecord

    if tracker.find_run(experiment_id, {ROLE: TEACHER, TEACHER_FINGERPRINT: teacher.fingerprint}) is not None:
        return
    tags, metrics = TeacherRecord(
        study=args.experiment, fingerprint=teacher.fingerprint,
        teacher=naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
        dev_f1=teacher.dev_f1, test_f1=teacher.test_f1, params=models.count_parameters(teacher.model)).to_mlflow()
    with tracker.run(experiment_id, f"teacher {teacher.ref.display_name}", tags=tags) as run:
        run.log_metrics(metrics)


def bench_recipe(args: argparse.Namespace) -> None:
    from distill_lab.tracking import Tracker, default_tracking_uri

    tracker = None
    if not args.no_track:
        tracker = Tracker(default_tracking_uri(args.tracking_uri))
        experiment_id = tracker.ensure_experiment(args.experiment)
    arms = [False, True] if args.arm == "both" else [args.arm == "twin"]
    for seed in args.seeds:
        for twin in arms:
            result = _recipe_run(args, seed, twin)
            if tracker is not None:
                _track_teacher(tracker, experiment_id, args, result["teacher"])
                run_id = _track(tracker, experiment_id, args, seed, twin, result)
                print(f"  MLflow run {run_id} (experiment {args.experiment})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["epoch", "sweep", "recipe"])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=None, help="default 1 (epoch, sweep), 2 (recipe)")
    parser.add_argument("--lr", type=float, default=1e-4, help="recipe only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="recipe only")
    parser.add_argument("--arm", choices=["both", "textbrewer", "twin"], default="both",
                        help="recipe only: TextBrewer's KD, its no-KD twin, or both (per seed)")
    parser.add_argument("--spec", default=str(ROOT / "studies" / "headline_teacher.yaml"),
                        help="recipe only: the study spec whose data and teacher the recipe uses")
    parser.add_argument("--experiment", default="textbrewer_recipe", help="recipe only: MLflow experiment")
    parser.add_argument("--tracking-uri", default=None, help="recipe only: MLflow store (default as distill-lab)")
    parser.add_argument("--no-track", action="store_true", help="recipe only: print, do not log to MLflow")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe only: KEY=VALUE override of the spec (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 2.0 if args.command == "recipe" else 1.0
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}", flush=True)
    {"epoch": bench_epoch, "sweep": bench_sweep, "recipe": bench_recipe}[args.command](args)


if __name__ == "__main__":
    main()
