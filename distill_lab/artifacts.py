"""What a trial run logs besides numbers: the dev confusion matrix and sample predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix


def confusion_figure(gold: list[list[str]], predicted: list[list[str]], labels: tuple[str, ...]) -> Any:
    """Word-level label confusion (rows gold, columns predicted): each cell shows its count (blank
    for none) and is coloured by its share of the gold label's words."""
    flat_gold = [tag for tags in gold for tag in tags]
    flat_pred = [tag for tags in predicted for tag in tags]
    counts = confusion_matrix(flat_gold, flat_pred, labels=list(labels))
    # Colour by share: "O" outnumbers every entity label a hundredfold; coloured by count, the
    # entity rows would all look empty.
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(1.0 + 0.6 * len(labels), 1.0 + 0.5 * len(labels)))
    axes = figure.subplots()
    display = ConfusionMatrixDisplay(shares, display_labels=list(labels)).plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45, im_kw={"vmin": 0, "vmax": 1},
        text_kw={"fontsize": 7})
    for (row, column), text in np.ndenumerate(display.text_):
        text.set_text(str(counts[row, column]) if counts[row, column] else "")
        text.set_color("white" if shares[row, column] > 0.5 else "black")
    for tick in axes.get_xticklabels():
        tick.set_horizontalalignment("right")
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title("dev label confusion (word level)")
    figure.tight_layout()
    return figure


def predictions_tsv(sentences: list[Any], predicted: list[list[str]], limit: int = 200) -> str:
    lines = ["sentence\ttoken\tgold\tpredicted\tcorrect"]
    for index, (sentence, tags) in enumerate(zip(sentences[:limit], predicted[:limit])):
        for token, gold, guess in zip(sentence.tokens, sentence.tags or (), tags):
            lines.append(f"{index}\t{token}\t{gold}\t{guess}\t{int(gold == guess)}")
    return "\n".join(lines) + "\n"
