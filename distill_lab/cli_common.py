"""What every group of commands shares: the two consoles and the store options."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)  # progress and messages
out = Console()  # what a command answers (tables, paths): stdout, for pipes

StorageOption = typer.Option(None, "--storage", help="Optuna storage: journal file path (default "
                             ".distill_lab/optuna.journal), sqlite:///..., postgresql+psycopg2://...")
TrackingOption = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the spec's, "
                              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
