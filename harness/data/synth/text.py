"""Sentences to speak: LibriSpeech-style normalisation, sentence splitting, the installed book text."""
from __future__ import annotations

import bz2
import csv
import lzma
import os
import re
import struct
import unicodedata
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

    R packages keep their data sets in this format: the .rdx index is a compressed
    serialized list of (offset, length) per object, and the .rdb holds each object
    as a compressed R serialization. Only what character data needs is decoded.
    """
    rdx = rdb.with_suffix(".rdx")
    if not rdx.is_file():
        raise SynthesisError(f"{rdb}: R lazy-load index {rdx.name} not found next to it")
    # The index is written by saveRDS: gzip, which wbits=32+15 lets zlib detect.
    index = _RUnserializer(zlib.decompress(rdx.read_bytes(), 32 + zlib.MAX_WBITS)).read()
    fields = dict(zip(index.names, index.values))
    variables, compressed = fields["variables"], fields["compressed"][0]
    blob = rdb.read_bytes()
    out: dict[str, list[str]] = {}
    for name, (offset, length) in zip(variables.names, variables.values):
        chunk = blob[offset:offset + length]
        if compressed in (2, 3):  # a type byte follows the length: '0' none, '2' bzip2, 'Z' xz
            kind, payload = chunk[4:5], chunk[5:]
            if kind == b"2":
                payload = bz2.decompress(payload)
            elif kind == b"Z":
                payload = lzma.decompress(payload)
        else:
            payload = zlib.decompress(chunk[4:])
        value = _RUnserializer(payload).read()
        if isinstance(value, _RList):
            value = value.values
        if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
            out[name] = [v or "" for v in value]
    return out


class _RList:
    """An R vector or pairlist with its `names` attribute."""

    def __init__(self, values: list, names: list[str]) -> None:
        self.values, self.names = values, names


class _RUnserializer:
    """Minimal reader of R's XDR serialization format (versions 2 and 3)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.refs: list = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two more ints
            n = (self._int() << 32) + self._int()
        return n

    def read(self):
        if self.data[:2] != b"X\n":
            raise SynthesisError("not an R XDR serialization (expected it to start with 'X\\n')")
        self.pos = 2
        version = self._int()
        self.pos += 8  # writer version, minimal reader version
        if version == 3:
            n = self._int()
            self.pos += n  # skip the native encoding name
        return self._item()

    def _attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        attrs = self._item()
        return dict(zip(attrs.names, attrs.values)) if isinstance(attrs, _RList) else {}

    def _item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP: back-reference to an earlier symbol or environment
            ref = flags >> 8 or self._int()
            return self.refs[ref - 1]
        if kind in (241, 242, 250, 251, 252, 253):  # base/empty/global env, missing arg, ...
            return None
        if kind == 1:  # SYMSXP
            name = self._item()
            self.refs.append(name)
            return name
        if kind in (2, 3, 5, 6, 17, 239, 240):  # pairlist-like: [attr] [tag] car cdr
            self._attributes(has_attr)
            tag = self._item() if has_tag else None
            car = self._item()
            cdr = self._item()
            values, names = [car], [tag or ""]
            if isinstance(cdr, _RList):
                values += cdr.values
                names += cdr.names
            return _RList(values, names)
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None  # NA_character_
            s = self.data[self.pos:self.pos + n]
            self.pos += n
            latin1 = bool(flags & (1 << 14)) and not flags & (1 << 15)
            return s.decode("latin-1" if latin1 else "utf-8", errors="replace")
        if kind in (10, 13):  # LGLSXP, INTSXP
            n = self._length()
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # REALSXP
            n = self._length()
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            values = [self._item() for _ in range(self._length())]
        else:
            raise SynthesisError(f"R object type {kind} is not supported by this reader")
        names = self._attributes(has_attr).get("names")
        if names is not None:
            return _RList(values, names.values if isinstance(names, _RList) else names)
        return values


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
