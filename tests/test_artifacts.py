"""What a trial run logs besides numbers: the confusion-matrix figure and the sample predictions."""

from __future__ import annotations

import numpy as np

from distill_lab.artifacts import confusion_figure, predictions_tsv
from distill_lab.data.corpus import Sentence

LABELS = ("O", "B-PER", "I-PER")


def test_confusion_figure_shows_counts_coloured_by_share_of_the_gold_label():
    gold = [["O", "O", "O", "B-PER"], ["O", "B-PER", "I-PER"]]
    predicted = [["O", "O", "B-PER", "B-PER"], ["O", "O", "I-PER"]]
    figure = confusion_figure(gold, predicted, LABELS)
    axes = figure.axes[0]
    texts = [[text.get_text() for text in row] for row in np.array(axes.texts).reshape(3, 3)]
    # O: 3 of 4 right, 1 read as B-PER; B-PER: 1 right, 1 read as O; I-PER: 1 right; zeros blank.
    assert texts == [["3", "1", ""], ["1", "1", ""], ["", "", "1"]]
    shares = axes.images[0].get_array()
    assert np.allclose(shares, [[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert axes.images[0].get_clim() == (0, 1)
    colours = [text.get_color() for text in axes.texts]
    assert colours[0] == "white" and colours[1] == "black"  # 0.75 of its row, then 0.25
    assert [t.get_text() for t in axes.get_yticklabels()] == list(LABELS)
    assert axes.get_title() == "dev label confusion (word level)"


def test_predictions_tsv_marks_each_word_and_stops_at_the_limit():
    sentences = [Sentence(tokens=("Ann", "runs"), tags=("B-PER", "O")), Sentence(tokens=("Bo",), tags=("B-PER",))]
    text = predictions_tsv(sentences, [["B-PER", "B-PER"], ["O"]], limit=1)
    assert text == "sentence\ttoken\tgold\tpredicted\tcorrect\n0\tAnn\tB-PER\tB-PER\t1\n0\truns\tO\tB-PER\t0\n"
