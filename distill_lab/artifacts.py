"""What a trial run logs besides numbers: the dev confusion matrix and sample predictions."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix


def confusion_figure(gold: list[list[str]], predicted: list[list[str]], labels: tuple[str, ...]) -> Any:
    """Word-level label confusion (rows gold, columns predicted; each row as shares of its gold label)."""
    flat_gold = [tag for tags in gold for tag in tags]
    flat_pred = [tag for tags in predicted for tag in tags]
    # normalize="true": "O" outnumbers every entity label a hundredfold; raw counts would hide them.
    matrix = confusion_matrix(flat_gold, flat_pred, labels=list(labels), normalize="true")
    figure = Figure(figsize=(1.0 + 0.6 * len(labels), 1.0 + 0.5 * len(labels)))
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(labels)).plot(
        ax=axes, cmap="Blues", colorbar=False, values_format=".2f", xticks_rotation=45, text_kw={"fontsize": 7})
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title("dev label confusion (word level, share of each gold label)")
    figure.tight_layout()
    return figure


def predictions_tsv(sentences: list[Any], predicted: list[list[str]], limit: int = 200) -> str:
    lines = ["sentence\ttoken\tgold\tpredicted\tcorrect"]
    for index, (sentence, tags) in enumerate(zip(sentences[:limit], predicted[:limit])):
        for token, gold, guess in zip(sentence.tokens, sentence.tags or (), tags):
            lines.append(f"{index}\t{token}\t{gold}\t{guess}\t{int(gold == guess)}")
    return "\n".join(lines) + "\n"
