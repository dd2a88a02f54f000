"""distill-lab command line.

Every DistillLabError becomes one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from distill_lab.errors import DistillLabError

app = typer.Typer(help="Sweeps of knowledge distillation for BERT-like NER models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)
out = Console()
_state = {"debug": False}

SetOption = typer.Option(None, "--set", help="Override a spec value: dotted.key=value (repeatable).")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass


@app.command()
def validate(spec: Path = typer.Argument(..., help="A study spec (YAML)."),
             overrides: Optional[list[str]] = SetOption) -> None:
    """Check a spec and print the resolved run config."""
    from distill_lab.spec import load_spec, resolve

    study_spec = load_spec(spec, overrides or [])
    config = resolve(study_spec)
    out.print(f"[green]ok[/green] {spec}: study {study_spec.name!r}, "
              f"{len(study_spec.study.search_space)} searched parameter(s), {study_spec.study.n_trials} trials")
    out.print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), markup=False, highlight=False)


@app.command()
def run(spec: Path = typer.Argument(..., help="A study spec (YAML)."),
        overrides: Optional[list[str]] = SetOption,
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object.")) -> None:
    """Run ONE distillation with the spec's base values (no search)."""
    from distill_lab.spec import load_spec, resolve

    config = resolve(load_spec(spec, overrides or []))
    _quiet_libraries()
    from distill_lab.pipeline import run_distillation
    from distill_lab.progress import StageProgress

    with StageProgress(console, enabled=not as_json or sys.stderr.isatty()) as progress:
        result = run_distillation(config, stage=progress.update)
    summary = result.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    teacher, student = summary["teacher"], summary["student"]
    table = Table(title=f"distill-lab run: {summary['name']}", show_lines=False)
    table.add_column("model")
    table.add_column("dev F1", justify="right")
    table.add_column("test F1", justify="right")
    table.add_column("params", justify="right")
    reused = " (cached)" if teacher["reused"] else ""
    table.add_row(f"teacher {teacher['model']} ({teacher['layers']} layers){reused}", f"{teacher['dev_f1'] * 100:.2f}",
                  f"{teacher['test_f1'] * 100:.2f}", f"{teacher['params']:,}")
    table.add_row(f"student ({student['layers']} layers, init={student['init']})", f"{student['dev_f1'] * 100:.2f}",
                  f"{student['test_f1'] * 100:.2f}", f"{student['params']:,}")
    out.print(table)
    per_type = Table(title="student F1 per entity type")
    per_type.add_column("type")
    per_type.add_column("dev F1", justify="right")
    per_type.add_column("test F1", justify="right")
    for entity, value in student["dev_f1_per_type"].items():
        per_type.add_row(entity, f"{value * 100:.2f}", f"{student['test_f1_per_type'].get(entity, 0.0) * 100:.2f}")
    out.print(per_type)
    distill = summary["distill"]
    losses = ", ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in summary["losses"].items())
    out.print(f"setting: T={distill['temperature']:g} alphas(hard/soft/hidden/attn)="
              f"{'/'.join(f'{a:g}' for a in distill['alphas'])} map={distill['layer_mapping'] or '-'}")
    out.print(f"last losses: {losses}")
    out.print(f"retention {summary['retention'] * 100:.1f}% of teacher dev F1, compression {summary['compression']:.2f}x, "
              f"train-sample F1 {student['train_sample_f1'] * 100:.2f}, diagnosis: {summary['diagnosis']} "
              f"({summary['advice']})")
    out.print(f"{summary['steps']} steps, {summary['tokens_per_second']:.0f} tokens/s, wall time {summary['wall_seconds']:.1f} s")


def main() -> None:
    """Console entry point: one clean line for user errors, exit code 2."""
    try:
        app(standalone_mode=False)
    except DistillLabError as err:
        if _state["debug"]:
            traceback.print_exc()
        # Plain print: messages contain brackets (e.g. layer lists) that rich would read as markup.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
