"""CoNLL reader, tag-scheme normalisation and corpus helpers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from distill_lab.data.conll import load_conll_dir, read_conll
from distill_lab.data.corpus import NerCorpus, Sentence, fingerprint, label_list, to_iob2
from distill_lab.errors import DataError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _splits_dir(tmp_path: Path, names: dict[str, str]) -> Path:
    for name, text in names.items():
        _write(tmp_path / name, text)
    return tmp_path


# --- to_iob2 -------------------------------------------------------------------------------


def test_to_iob2_keeps_valid_iob2():
    tags = ("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC")
    assert to_iob2(tags) == tags
    assert to_iob2(tags, "iob2") == tags


def test_to_iob2_converts_iob1():
    # IOB1: I- everywhere, B- only between two adjacent entities of the same type.
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC"]
    expected = ("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC")
    assert to_iob2(tags, "iob1") == expected
    assert to_iob2(tags, "auto") == expected


def test_to_iob2_converts_bioes():
    tags = ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "S-LOC", "S-LOC", "B-MISC", "E-MISC"]
    expected = ("B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "B-LOC", "B-MISC", "I-MISC")
    assert to_iob2(tags, "bioes") == expected
    assert to_iob2(tags, "auto") == expected


def test_to_iob2_bioes_entity_after_end_tag_starts_new_entity():
    # After E-X/S-X the entity is closed, so a following I-X/E-X opens a new one.
    assert to_iob2(["B-PER", "E-PER", "I-PER", "E-PER"], "auto") == (
        "B-PER", "I-PER", "B-PER", "I-PER")
    assert to_iob2(["S-LOC", "E-LOC"], "bioes") == ("B-LOC", "B-LOC")


def test_to_iob2_empty_and_all_outside():
    assert to_iob2([]) == ()
    assert to_iob2(["O", "O"]) == ("O", "O")


@pytest.mark.parametrize("bad", ["X-PER", "B-", "PER", "b-PER", "I_PER", ""])
def test_to_iob2_rejects_invalid_tag(bad):
    with pytest.raises(DataError, match=rf"^sent 7: invalid tag '{bad}'"):
        to_iob2(["O", bad], where="sent 7")


@pytest.mark.parametrize("scheme", ["iob1", "iob2"])
def test_to_iob2_rejects_bioes_tags_under_iob_scheme(scheme):
    with pytest.raises(DataError, match=rf"'S-PER' is not allowed in scheme '{scheme}'"):
        to_iob2(["S-PER"], scheme)


def test_to_iob2_rejects_unknown_scheme():
    with pytest.raises(DataError, match=r"unknown tag scheme 'bilou'.*auto, iob1, iob2, bioes"):
        to_iob2(["O"], "bilou")


# --- corpus helpers ------------------------------------------------------------------------


def test_label_list_orders_o_then_sorted_types():
    sentences = [
        Sentence(("a", "b"), ("B-PER", "I-PER")),
        Sentence(("c",), ("B-LOC",)),
        Sentence(("d",), None),
    ]
    other = [Sentence(("e", "f", "g", "h"), ("O", "B-MISC", "I-ZOO", "B-ART"))]
    assert label_list([sentences, other]) == (
        "O", "B-ART", "I-ART", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER",
        "B-ZOO", "I-ZOO")
    assert label_list([]) == ("O",)
    assert label_list([[Sentence(("a",), ("O",))]]) == ("O",)


def test_ner_corpus_entity_types_and_from_splits():
    s = Sentence(("Ann", "in", "Oslo"), ("B-PER", "O", "B-LOC"))
    corpus = NerCorpus.from_splits({"train": [s], "dev": [], "test": [s]})
    assert corpus.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    assert corpus.entity_types() == ("LOC", "PER")
    assert corpus.train == (s,) and corpus.dev == ()


def test_sentence_rejects_length_mismatch_and_stores_tuples():
    with pytest.raises(DataError, match="2 tokens but 1 tags"):
        Sentence(("a", "b"), ("O",))
    s = Sentence(["a"], ["O"])  # type: ignore[arg-type]
    assert s.tokens == ("a",) and s.tags == ("O",)
    assert hash(s) == hash(Sentence(("a",), ("O",)))


def test_fingerprint_is_stable_and_sensitive():
    base = [Sentence(("New", "York"), ("B-LOC", "I-LOC")), Sentence(("hi",), ("O",))]
    fp = fingerprint(base)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(list(base)) == fp
    # Any change to a token, a tag, token boundaries, order or labeledness changes it.
    variants = [
        [Sentence(("New", "york"), ("B-LOC", "I-LOC")), base[1]],
        [Sentence(("New", "York"), ("B-LOC", "B-LOC")), base[1]],
        [Sentence(("New York",), ("B-LOC",)), base[1]],
        [base[1], base[0]],
        [base[0], Sentence(("hi",), None)],
        [base[0]],
    ]
    assert len({fp, *(fingerprint(v) for v in variants)}) == len(variants) + 1


def test_fingerprint_matches_documented_serialisation():
    # Pinned so an accidental format change (which would orphan cached results) is caught.
    sentences = [Sentence(("a", "é"), ("B-X", "O")), Sentence(("b",), None)]
    expected = hashlib.sha256('[["a","é"],["B-X","O"]]\n[["b"],null]\n'.encode()).hexdigest()
    assert fingerprint(sentences) == expected
    assert fingerprint([]) == hashlib.sha256(b"").hexdigest()


def test_fingerprint_is_stable_across_processes():
    code = (
        "from distill_lab.data.corpus import Sentence, fingerprint;"
        "print(fingerprint([Sentence(('Zürich', 'x'), ('B-LOC', 'O'))]))"
    )
    here = fingerprint([Sentence(("Zürich", "x"), ("B-LOC", "O"))])
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""}, cwd=Path(__file__).parent.parent,
        )
        assert out.stdout.strip() == here


# --- read_conll ----------------------------------------------------------------------------


def test_read_conll_parses_sentences_docstart_and_extra_columns(tmp_path):
    path = _write(tmp_path / "train.txt", (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU NNP B-NP B-ORG\n"
        "rejects VBZ B-VP O\n"
        "German JJ B-NP B-MISC\n"
        "\n"
        "\n"
        "Peter NNP B-NP B-PER\n"
        "Blackburn NNP I-NP I-PER\n"
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "BRUSSELS NNP B-NP B-LOC\n"
        "-DOCSTART- -X- -X- O\n"
        "Paris NNP B-NP B-LOC\n"
    ))
    sentences = read_conll(path)
    # A -DOCSTART- line also ends a sentence that no blank line closed.
    assert sentences == [
        Sentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
        Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
        Sentence(("BRUSSELS",), ("B-LOC",)),
        Sentence(("Paris",), ("B-LOC",)),
    ]


def test_read_conll_tabs_crlf_and_bom(tmp_path):
    path = _write(tmp_path / "dev.tsv", "\ufeffNew York\tB-LOC\r\nis\tO\r\n\r\nÉmile\t  I-PER \r\n")
    assert read_conll(path) == [
        Sentence(("New York", "is"), ("B-LOC", "O")),
        Sentence(("Émile",), ("B-PER",)),
    ]


def test_read_conll_keeps_non_ascii_space_inside_token(tmp_path):
    path = _write(tmp_path / "t.txt", "10\u00a0000 O\n")
    assert read_conll(path) == [Sentence(("10\u00a0000",), ("O",))]


def test_read_conll_converts_iob1_and_bioes_per_sentence(tmp_path):
    path = _write(tmp_path / "mixed.txt", (
        "Ann I-PER\nLee I-PER\nsaw O\nRome I-LOC\n\n"
        "Ann S-PER\nin O\nNew B-LOC\nYork E-LOC\n"
    ))
    assert [s.tags for s in read_conll(path)] == [
        ("B-PER", "I-PER", "O", "B-LOC"),
        ("B-PER", "O", "B-LOC", "I-LOC"),
    ]


def test_read_conll_explicit_iob2_scheme_rejects_bioes_tag_with_line(tmp_path):
    path = _write(tmp_path / "s.txt", "a O\n\nb S-PER\n")
    with pytest.raises(DataError, match=r"s\.txt:3: tag 'S-PER' is not allowed in scheme 'iob2'"):
        read_conll(path, "iob2")


def test_read_conll_unlabeled_mode(tmp_path):
    path = _write(tmp_path / "raw.txt", "Hello\nworld\n\n-DOCSTART-\n\nBye O\n")
    assert read_conll(path, labeled=False) == [
        Sentence(("Hello", "world"), None),
        Sentence(("Bye",), None),
    ]


def test_read_conll_rejects_single_column_line_when_labeled(tmp_path):
    path = _write(tmp_path / "one.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"one\.txt:2: expected a token and a tag.*'rejects'"):
        read_conll(path)


@pytest.mark.parametrize("bad", ["X-PER", "B-", "PER"])
def test_read_conll_rejects_invalid_tag_with_line(tmp_path, bad):
    path = _write(tmp_path / "bad.txt", f"a O\n\nb O\nc {bad}\n")
    with pytest.raises(DataError, match=rf"bad\.txt:4: invalid tag '{bad}'; expected 'O' or"):
        read_conll(path)


def test_read_conll_rejects_empty_file(tmp_path):
    path = _write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: no sentences found \(file is empty\)"):
        read_conll(path)


def test_read_conll_rejects_file_with_only_docstart(tmp_path):
    path = _write(tmp_path / "doc.txt", "-DOCSTART- O\n\n")
    with pytest.raises(DataError, match=r"doc\.txt: no sentences found \(only -DOCSTART-"):
        read_conll(path)


def test_read_conll_rejects_non_utf8_with_line(tmp_path):
    path = _write(tmp_path / "latin.txt", "a O\nb O\n\nMüller B-PER\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"latin\.txt:4: file is not valid UTF-8"):
        read_conll(path)


def test_read_conll_rejects_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        read_conll(tmp_path / "nope.txt")


# --- load_conll_dir ------------------------------------------------------------------------


def test_load_conll_dir_finds_alternative_names(tmp_path):
    directory = _splits_dir(tmp_path, {
        "train.conll": "a B-PER\n",
        "valid.txt": "b B-LOC\n",
        "test": "c O\n",
    })
    splits = load_conll_dir(directory)
    assert splits == {
        "train": [Sentence(("a",), ("B-PER",))],
        "dev": [Sentence(("b",), ("B-LOC",))],
        "test": [Sentence(("c",), ("O",))],
    }


def test_load_conll_dir_prefers_txt_and_passes_scheme(tmp_path):
    directory = _splits_dir(tmp_path, {
        "train.txt": "a I-PER\n",
        "train.conll": "z O\n",
        "dev.txt": "b O\n",
        "test.txt": "c O\n",
    })
    assert load_conll_dir(directory)["train"] == [Sentence(("a",), ("B-PER",))]
    _write(tmp_path / "dev.txt", "b S-PER\n")
    with pytest.raises(DataError, match=r"dev\.txt:1: tag 'S-PER' is not allowed"):
        load_conll_dir(directory, scheme="iob1")


def test_load_conll_dir_rejects_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere: data directory does not exist; it should "
                                        r"contain train, dev and test"):
        load_conll_dir(missing)


def test_load_conll_dir_rejects_missing_split_listing_names(tmp_path):
    directory = _splits_dir(tmp_path, {"train.txt": "a O\n", "test.txt": "c O\n"})
    with pytest.raises(DataError, match=r"no dev file found; tried dev\.txt, dev\.conll, "
                                        r"dev\.tsv, dev, valid\.txt.*validation\.txt"):
        load_conll_dir(directory)


def test_lines_of_invisible_characters_are_blank_lines_and_counted(tmp_path, caplog):
    # A stray BOM line and a zero-width-space line between sentences; a BOM glued to a token.
    path = _write(tmp_path / "glitch.txt", "EU B-ORG\nrejects O\n\ufeff\nGerman B-MISC\n\u200b \u200d\n"
                                           "\ufeffcall O\n")
    sentences = read_conll(path)
    assert [s.tokens for s in sentences] == [("EU", "rejects"), ("German",), ("call",)]
    assert "3 line(s) with invisible characters" in caplog.text


def test_a_token_with_a_space_inside_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path / "space.txt", "Visit O\nNew York B-LOC\n")
    with pytest.raises(DataError, match=r"space\.txt:2: 3 columns where line 1 has 2 \('New York B-LOC'\); "
                                        r"a token with a space inside\?"):
        read_conll(path)
    tabbed = _write(tmp_path / "tabbed.txt", "Visit\tO\nNew York\tB-LOC\n")
    assert read_conll(tabbed)[0].tokens == ("Visit", "New York")


def test_words_the_tokenizer_drops_keep_their_tag_as_the_unknown_token(caplog):
    from distill_lab import models
    from distill_lab.data.align import encode_sentences
    from distill_lab.data.corpus import Sentence

    tokenizer = models.load_tokenizer(models.resolve_reference("tiny-bert"))
    sentence = Sentence(("Mary", "\u200b", "visited", "\x07", "Paris"), ("B-PER", "O", "B-MISC", "O", "B-LOC"))
    labels = {"O": 0, "B-PER": 1, "B-LOC": 2, "B-MISC": 3}
    encoded = encode_sentences([sentence], tokenizer, labels, 32).encoded[0]
    assert encoded.labels == (1, 0, 3, 0, 2)  # every word kept, no tag shifted
    tokens = tokenizer.convert_ids_to_tokens(list(encoded.input_ids))
    assert [tokens[p] for p in encoded.word_positions][1::2] == [tokenizer.unk_token, tokenizer.unk_token]
    assert "2 word(s) the tokenizer turns into no token" in caplog.text
