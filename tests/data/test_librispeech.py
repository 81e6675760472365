"""LibriSpeech reader on the real 22-utterance tree in shared/data, and on broken copies of it."""

import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from harness.data.librispeech import LibriSpeechError, librispeech_splits, read_librispeech

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MINI = SHARED / "librispeech-mini"


@pytest.mark.parametrize("root", [MINI, MINI / "LibriSpeech"])
def test_splits_and_counts(root):
    assert librispeech_splits(root) == ["dev-clean", "test-clean", "train-clean-100"]
    counts = {split: len(read_librispeech(root, split)) for split in librispeech_splits(root)}
    assert counts == {"dev-clean": 12, "test-clean": 9, "train-clean-100": 1}


def test_utterances_match_files():
    utts = [u for split in librispeech_splits(MINI) for u in read_librispeech(MINI, split)]
    assert len(utts) == 22 and len({u.id for u in utts}) == 22
    for u in utts:
        assert Path(u.audio).name == f"{u.id}.flac"
        assert u.speaker == u.id.split("-")[0]
        assert u.text == u.text.upper() and u.text.strip() == u.text
        info = sf.info(u.audio)
        assert u.duration == pytest.approx(info.frames / info.samplerate)
    total = sum(u.duration for u in utts)
    assert 140 < total < 170  # "2.6 minutes in all"

    test_clean = read_librispeech(MINI, "test-clean")
    first = test_clean[0]  # ordered by speaker, chapter, transcript line
    assert first.id == "61-70968-0000"  # speakers in numeric order: 61 before 1089
    assert test_clean[1].id == "1089-134686-0000"
    assert test_clean[1].text.startswith("HE HOPED THERE WOULD BE STEW FOR DINNER")
    assert [u.speaker for u in test_clean] == sorted((u.speaker for u in test_clean), key=int)


def test_unknown_split_lists_available():
    with pytest.raises(LibriSpeechError, match="dev-other.*available: dev-clean, test-clean, train-clean-100"):
        read_librispeech(MINI, "dev-other")


@pytest.fixture
def tree(tmp_path) -> Path:
    """A writable copy of one LibriSpeech chapter (1988-24833, 4 utterances)."""
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1988" / "24833"
    shutil.copytree(MINI / "LibriSpeech" / "dev-clean" / "1988" / "24833", chapter)
    return tmp_path


def trans(tree: Path) -> Path:
    return tree / "LibriSpeech" / "dev-clean" / "1988" / "24833" / "1988-24833.trans.txt"


def test_copy_reads(tree):
    assert [u.id for u in read_librispeech(tree, "dev-clean")] == [f"1988-24833-000{i}" for i in range(4)]


def test_transcript_line_without_audio(tree):
    with open(trans(tree), "a") as f:
        f.write("1988-24833-0009 A LINE WITH NO RECORDING\n")
    with pytest.raises(LibriSpeechError, match=r"1988-24833\.trans\.txt:5: no audio file 1988-24833-0009\.flac"):
        read_librispeech(tree, "dev-clean")


def test_audio_without_transcript_line(tree):
    lines = trans(tree).read_text().splitlines(keepends=True)
    trans(tree).write_text("".join(lines[:2] + lines[3:]))  # drop the line of utterance 0002
    with pytest.raises(LibriSpeechError, match=r"1988-24833-0002\.flac: audio file has no line"):
        read_librispeech(tree, "dev-clean")


@pytest.mark.parametrize("bad_line", [
    "1988-24833-0004\n",  # no transcript
    "1988_24833_0004 WORDS\n",  # not an utterance id
    "1988-99999-0004 WRONG CHAPTER\n",  # id of another chapter
])
def test_malformed_line_names_file_and_line(tree, bad_line):
    with open(trans(tree), "a") as f:
        f.write(bad_line)
    with pytest.raises(LibriSpeechError, match=r"1988-24833\.trans\.txt:5: "):
        read_librispeech(tree, "dev-clean")


def test_missing_transcript_file(tree):
    trans(tree).unlink()
    with pytest.raises(LibriSpeechError, match="missing transcript file 1988-24833.trans.txt"):
        read_librispeech(tree, "dev-clean")


@pytest.mark.parametrize("content, found", [
    ({}, "found an empty folder"),
    ({"README.txt": "x", "wavs/a.flac": "", "LibriSpeech-notes/x.txt": ""},
     "found LibriSpeech-notes/, README.txt, wavs/"),
])
def test_a_folder_that_is_not_librispeech_is_named_with_what_it_holds(tmp_path, content, found):
    """A folder without any <split>/<speaker>/ tree: the old reader returned no splits (and `harness
    data librispeech` then wrote nothing and exited 0). Now LibriSpeechError: folder, layout, contents."""
    for name, text in content.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    expected = f"{tmp_path}: not a LibriSpeech tree: expected <split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt"
    with pytest.raises(LibriSpeechError, match=re.escape(expected)) as e:
        librispeech_splits(tmp_path)
    assert str(e.value).endswith(found)


def test_select_splits_checks_every_name_before_anything_is_read():
    """The old CLI read and wrote the splits one by one, so an unknown name after a good one left a
    partial output behind; `select_splits` checks all names first (and names every split when none)."""
    from harness.data.librispeech import select_splits

    assert select_splits(MINI, []) == ["dev-clean", "test-clean", "train-clean-100"]
    assert select_splits(MINI, ["test-clean", "dev-clean"]) == ["test-clean", "dev-clean"]
    with pytest.raises(LibriSpeechError, match="split 'dev-other' not found; available: dev-clean, test-clean, "
                                               "train-clean-100"):
        select_splits(MINI, ["dev-clean", "dev-other"])
