"""Sentences to speak: LibriSpeech-style normalisation, sentence splitting, the installed book text."""
from __future__ import annotations

import bz2
import csv
import lzma
import os
import re
import unicodedata
import warnings
import zlib
from pathlib import Path



from harness.data.synth.errors import SynthesisError


# Expanded before sentence splitting, so "Mr. Darcy" is not cut after "Mr.".
# LibriSpeech transcripts spell these out the same way (MISTER, MISSUS, ...).
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)


# A sentence ends at . ! or ?, possibly followed by one closing quote or bracket, then space.
_SENTENCE_END_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+")


_ALLOWED_RE = re.compile(r"^[A-Z' ]+$")


# Only marks that are not read aloud; symbols such as $ % + / stay, and make the sentence rejected.
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in "!\"(),-.:;?[]_{}`"})


def normalize_text(text: str) -> str | None:
    """LibriSpeech-style transcript: uppercase A-Z, apostrophes inside words, single spaces.

    Returns None when the sentence cannot be turned into an unambiguous spoken form,
    i.e. it contains digits, symbols such as % or $, or letters outside A-Z: the TTS
    engine would read those in a way the transcript cannot predict.
    """
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("&", " and ")
    if not text.isascii():  # the slow per-character pass only where it can matter
        # Strip accents (café -> cafe) but keep the base letter.
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        text = "".join(" " if c != "'" and unicodedata.category(c).startswith("P") else c for c in text)
    # Punctuation (including dashes and the underscores Gutenberg uses for italics) is a word break.
    text = text.translate(_PUNCTUATION_TO_SPACE)
    # Keep an apostrophe only between letters (DON'T, O'CLOCK); quote marks go.
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)
    text = " ".join(text.upper().split())
    if not text or not _ALLOWED_RE.match(text):
        return None
    return text


def split_sentences(text: str) -> list[str]:
    """Split running text into raw sentences; blank lines end paragraphs (and sentences)."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        paragraph = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], paragraph)
        sentences.extend(s for s in _SENTENCE_END_RE.split(paragraph) if s.strip())
    return sentences


def _read_r_lazyload(rdb: Path) -> dict[str, list[str]]:
    """Character vectors stored in an R lazy-load database (`Rdata.rdb` + `Rdata.rdx`).

    R packages keep their data sets in this format: the .rdx index is a compressed serialized
    list of (offset, length) per object, and the .rdb holds each object as a compressed R
    serialization. The framing (offsets, compression) is read here; R's serialization format by
    the maintained ``rdata`` package (our own decoder of it was 125 lines; rdata takes about 2.5 s
    more for Jane Austen's six novels, once per corpus synthesis, for identical sentences).
    """
    from rdata.conversion import convert
    from rdata.parser import parse_data

    def unserialize(payload: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": a bare serialization is what it is
            return convert(parse_data(payload, expand_altrep=True))

    rdx = rdb.with_suffix(".rdx")
    if not rdx.is_file():
        raise SynthesisError(f"{rdb}: R lazy-load index {rdx.name} not found next to it")
    # The index is written by saveRDS: gzip, which wbits=32+15 lets zlib detect.
    index = unserialize(zlib.decompress(rdx.read_bytes(), 32 + zlib.MAX_WBITS))
    variables, compressed = index["variables"], int(index["compressed"][0])
    blob = rdb.read_bytes()
    out: dict[str, list[str]] = {}
    for name, (offset, length) in variables.items():
        chunk = blob[int(offset):int(offset) + int(length)]
        if compressed in (2, 3):  # a type byte follows the length: '0' none, '2' bzip2, 'Z' xz
            kind, payload = chunk[4:5], chunk[5:]
            if kind == b"2":
                payload = bz2.decompress(payload)
            elif kind == b"Z":
                payload = lzma.decompress(payload)
        else:
            payload = zlib.decompress(chunk[4:])
        value = unserialize(payload)
        values = list(value.values()) if isinstance(value, dict) else list(getattr(value, "tolist", lambda: value)())
        if values and all(v is None or isinstance(v, str) for v in values):
            out[str(name)] = [v or "" for v in values]
    return out


def load_sentences(path: str | os.PathLike, *, min_words: int = 4, max_words: int = 25) -> list[str]:
    """Normalised, de-duplicated sentences of min_words..max_words words, in file order.

    Understands three kinds of file:
      - `.tsv` with a header holding a `text` column (one sentence per row, e.g. the
        LibriSpeech transcript tables); rows are not split further;
      - `.rdb`, an R lazy-load database (as `default_text_source()` returns): every
        character vector in it is read as running text;
      - anything else: UTF-8 running text, split into sentences at . ! ? and blank lines.
    Sentences that cannot be normalised (digits, symbols, non-English letters) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sentence file not found")
    if path.suffix.lower() == ".tsv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise ValueError(f"{path}:1: expected a tab-separated header with a 'text' column, "
                                 f"got {reader.fieldnames}")
            raw = [row["text"] or "" for row in reader]
    elif path.suffix.lower() == ".rdb":
        raw = []
        for lines in _read_r_lazyload(path).values():
            raw.extend(split_sentences("\n".join(lines)))
    else:
        raw = split_sentences(path.read_text(encoding="utf-8"))

    sentences: dict[str, None] = {}  # an ordered set
    for s in raw:
        norm = normalize_text(s)
        if norm is not None and min_words <= len(norm.split()) <= max_words:
            sentences[norm] = None
    return list(sentences)


# Standard places where Debian (and R itself) install R packages.
_R_LIBRARY_DIRS = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library")


DEFAULT_TEXT_PACKAGE = "r-cran-janeaustenr"


def default_text_source() -> list[Path]:
    """The default book text: Jane Austen's six novels from the Debian package r-cran-janeaustenr.

    Public-domain 19th-century prose, the same kind of text LibriSpeech's audiobooks
    are read from. The package stores the novels as an R lazy-load database, which
    `load_sentences` reads directly (R itself is not needed at run time).
    """
    dirs = [d for var in ("R_LIBS", "R_LIBS_SITE", "R_LIBS_USER") for d in os.environ.get(var, "").split(":") if d]
    for d in [*dirs, *_R_LIBRARY_DIRS]:
        rdb = Path(d) / "janeaustenr" / "data" / "Rdata.rdb"
        if rdb.is_file():
            return [rdb]
    raise FileNotFoundError(
        f"default text source not found: install the Debian package {DEFAULT_TEXT_PACKAGE} "
        f"(apt-get install -y --no-install-recommends {DEFAULT_TEXT_PACKAGE}), "
        "or pass sentences from another file to load_sentences()"
    )
