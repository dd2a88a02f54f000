"""Reader for CoNLL-style NER files: one token per line (token first, tag last), blank lines
between sentences."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from distill_lab.data.corpus import SCHEMES, Sentence, check_tag, to_iob2
from distill_lab.errors import DataError

log = logging.getLogger(__name__)

_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "dev": ("dev", "valid", "validation"),
    "test": ("test",),
}
_EXTENSIONS = (".txt", ".conll", ".tsv", "")
# The original CoNLL-2003 distribution names its files eng.train / eng.testa / eng.testb.
_LEGACY = {"train": ("eng.train",), "dev": ("eng.testa",), "test": ("eng.testb",)}

SPLIT_FILE_NAMES: dict[str, tuple[str, ...]] = {
    split: tuple(stem + ext for stem in stems for ext in _EXTENSIONS) + _LEGACY[split]
    for split, stems in _STEMS.items()
}

_ASCII_SPACE = " \t\r\n\f\v"
# Invisible characters that public NER files carry by accident: a stray byte-order mark,
# zero-width space / non-joiner / joiner, word joiner. A line of only these is a blank line.
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"
_COLUMN_SEP = re.compile(r"[ \t]+")


def _columns(line: str) -> list[str]:
    """Split a non-blank line into columns.

    Tab-separated lines are split on tabs only, so a token may contain spaces; otherwise on
    runs of ASCII spaces/tabs. ``str.split()`` is avoided because it also splits on Unicode
    spaces (e.g. U+00A0) that can be part of a token.
    """
    if "\t" in line:
        return [c.strip(_ASCII_SPACE) for c in line.split("\t") if c.strip(_ASCII_SPACE)]
    return _COLUMN_SEP.split(line.strip(_ASCII_SPACE))


def _decode(path: Path, data: bytes) -> str:
    try:
        # utf-8-sig drops a leading BOM that would otherwise glue onto the first token.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: file is not valid UTF-8 (byte {data[exc.start]:#04x}); "
            f"re-encode it as UTF-8"
        ) from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return _decode(path, data)


def _check_columns(cols: list[str], layout: tuple[int, int], where: str, line: str) -> None:
    """A labeled line: a token and a tag, with as many columns as the file's first token line."""
    if len(cols) < 2:
        raise DataError(f"{where}: expected a token and a tag separated by whitespace, "
                        f"found one column {cols[0]!r} (use labeled=False for token-only text)")
    if len(cols) != layout[0]:
        # "New York B-LOC": a token with a space inside would silently become "New".
        raise DataError(f"{where}: {len(cols)} columns where line {layout[1]} has {layout[0]} "
                        f"({line.strip(_ASCII_SPACE)[:60]!r}); a token with a space inside? separate the columns "
                        f"with tabs")


def read_conll(path: Path, scheme: str = "auto", *, labeled: bool = True) -> list[Sentence]:
    """Read one CoNLL file into sentences with IOB2 tags (``tags=None`` when ``labeled=False``).

    Columns are whitespace- or tab-separated; the first is the token and, for labeled
    files, the last is the tag (any middle columns such as POS are ignored). ``-DOCSTART-``
    lines are skipped. Raises DataError naming the file and 1-based line on any problem.
    """
    path = Path(path)
    if scheme not in SCHEMES:
        raise DataError(f"{path}: unknown tag scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    text = _read_text(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0  # line number of the current sentence's first token
    repaired = 0  # lines of invisible characters read as blank, or stripped of a leading one
    layout: tuple[int, int] | None = None  # (columns, line) of the first token line: all must match

    def flush() -> None:
        if tokens:
            tag_tuple = to_iob2(tags, scheme, where=f"{path}:{start}") if labeled else None
            sentences.append(Sentence(tuple(tokens), tag_tuple))
            tokens.clear()
            tags.clear()

    # Split on "\n" only (not str.splitlines) so stray U+2028 etc. inside tokens are kept;
    # the "\r" of CRLF files is removed by the strip in _columns / the blank-line test.
    for lineno, line in enumerate(text.split("\n"), start=1):
        visible = line.strip(_ASCII_SPACE + _INVISIBLE)
        if not visible:
            repaired += bool(line.strip(_ASCII_SPACE))
            flush()
            continue
        if line.lstrip(_ASCII_SPACE)[0] in _INVISIBLE:
            line, repaired = line.lstrip(_ASCII_SPACE + _INVISIBLE), repaired + 1
        cols = _columns(line)
        if cols[0] == "-DOCSTART-":
            # Document boundary; it also ends any sentence not closed by a blank line.
            flush()
            continue
        if labeled:
            layout = layout or (len(cols), lineno)
            _check_columns(cols, layout, f"{path}:{lineno}", line)
            check_tag(cols[-1], scheme, where=f"{path}:{lineno}")
            tags.append(cols[-1])
        if not tokens:
            start = lineno
        tokens.append(cols[0])
    flush()
    if repaired:
        log.warning("%s: %d line(s) with invisible characters (byte-order marks, zero-width spaces) repaired",
                    path, repaired)

    if not sentences:
        what = "file is empty" if not text.strip(_ASCII_SPACE) else "only -DOCSTART-/blank lines"
        raise DataError(f"{path}: no sentences found ({what})")
    return sentences


def _find_split_file(directory: Path, split: str) -> Path:
    names = SPLIT_FILE_NAMES[split]
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: no {split} file found; tried {', '.join(names)}")


def split_files(directory: Path) -> dict[str, Path]:
    """The train/dev/test files of a CoNLL directory (no parsing): a missing one is a DataError."""
    directory = Path(directory)
    if not directory.is_dir():
        state = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(
            f"{directory}: data directory {state}; it should contain train, dev and test "
            f"CoNLL files (e.g. train.txt, dev.txt, test.txt)"
        )
    return {split: _find_split_file(directory, split) for split in ("train", "dev", "test")}


def load_conll_dir(directory: Path, scheme: str = "auto") -> dict[str, list[Sentence]]:
    """Read the train/dev/test CoNLL files of ``directory`` into ``{"train", "dev", "test"}``."""
    # Resolve all three names first so a missing split fails before any slow parsing.
    paths = split_files(directory)
    return {split: read_conll(path, scheme) for split, path in paths.items()}
