"""JSONL manifests: round trip, path handling, and errors that name the file and line."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from harness.data.manifest import ManifestError, Utterance, check_audio_files, read_manifest, write_manifest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHAPTER = SHARED / "librispeech-mini" / "LibriSpeech" / "dev-clean" / "1988" / "24833"


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def row(i: int, **kw) -> dict:
    return {"id": f"u{i}", "audio": f"a{i}.flac", "text": "HELLO WORLD", "duration": 1.5, **kw}


def test_roundtrip_relative_inside_absolute_outside(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    inside = corpus / "audio" / "1988-24833-0000.flac"
    shutil.copy(CHAPTER / "1988-24833-0000.flac", inside)
    outside = CHAPTER / "1988-24833-0001.flac"
    utts = [
        Utterance("a", str(inside), "FIRST ONE", 2.5, speaker="1988"),
        Utterance("b", str(outside), "SECOND ONE", 3.25),
    ]
    path = corpus / "train.jsonl"
    write_manifest(path, utts)

    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert raw[0] == {"id": "a", "audio": "audio/1988-24833-0000.flac", "text": "FIRST ONE",
                      "duration": 2.5, "speaker": "1988"}
    assert Path(raw[1]["audio"]).is_absolute() and "speaker" not in raw[1]

    back = read_manifest(path)
    assert [Path(u.audio).resolve() for u in back] == [inside.resolve(), outside.resolve()]
    assert [(u.id, u.text, u.duration, u.speaker) for u in back] == [
        ("a", "FIRST ONE", 2.5, "1988"), ("b", "SECOND ONE", 3.25, None)]

    # the corpus folder can move: relative paths follow the manifest
    moved = tmp_path / "moved"
    shutil.move(corpus, moved)
    assert Path(read_manifest(moved / "train.jsonl")[0].audio).is_file()
    assert [p.name for p in moved.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [row(1), row(2), '{"id": "u3", "audio": '])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: malformed JSON"):
        read_manifest(path)


def test_missing_keys_are_named(tmp_path):
    bad = row(2)
    del bad["duration"], bad["text"]
    path = write_lines(tmp_path / "m.jsonl", [row(1), bad])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: missing required key\(s\) text, duration"):
        read_manifest(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [row(1), row(2), row(3), row(2)])
    with pytest.raises(ManifestError, match=r"m\.jsonl:4: duplicate id 'u2' \(first seen on line 2\)"):
        read_manifest(path)


@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_text_rejected(tmp_path, text):
    path = write_lines(tmp_path / "m.jsonl", [row(1), row(2, text=text)])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: 'text' of 'u2' is empty"):
        read_manifest(path)


@pytest.mark.parametrize("duration", [-1, "1.5", None, True])
def test_bad_duration_rejected(tmp_path, duration):
    path = write_lines(tmp_path / "m.jsonl", [row(1, duration=duration)])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: 'duration'"):
        read_manifest(path)


def test_non_object_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [row(1), "[1, 2]"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: expected a JSON object"):
        read_manifest(path)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row(1)) + "\n\n" + json.dumps(row(2)) + "\n\n")
    assert [u.id for u in read_manifest(path)] == ["u1", "u2"]


def test_write_refuses_duplicates(tmp_path):
    u = Utterance("x", str(tmp_path / "x.flac"), "A", 1.0)
    with pytest.raises(ManifestError, match="duplicate id 'x'"):
        write_manifest(tmp_path / "m.jsonl", [u, u])
    assert not (tmp_path / "m.jsonl").exists()


def test_check_audio_files(tmp_path):
    real = sf.info(str(CHAPTER / "1988-24833-0000.flac")).duration  # the header's: the scan checks it
    good = Utterance("good", str(CHAPTER / "1988-24833-0000.flac"), "A", real)
    missing = Utterance("missing", str(tmp_path / "nope.flac"), "A", 1.0)
    garbage_path = tmp_path / "garbage.flac"
    garbage_path.write_bytes(b"not audio at all" * 10)
    garbage = Utterance("garbage", str(garbage_path), "A", 1.0)
    cut_path = tmp_path / "cut.flac"
    cut_path.write_bytes((CHAPTER / "1988-24833-0000.flac").read_bytes()[:30_000])
    cut = Utterance("cut", str(cut_path), "A", real)  # its header still says the full length

    problems = {u.id: reason for u, reason in check_audio_files([good, missing, garbage, cut])}
    assert set(problems) == {"missing", "garbage"}  # a header-only check cannot see truncation
    assert "missing" in problems["missing"] and "nope.flac" in problems["missing"]
    assert "garbage.flac" in problems["garbage"]

    problems = {u.id: reason for u, reason in check_audio_files([good, cut], decode=True)}
    assert set(problems) == {"cut"} and "cut.flac" in problems["cut"]

    wrong = Utterance("wrong", good.audio, "A", 1.0)  # a manifest duration the audio does not have
    for decode in (False, True):
        [(u, reason)] = check_audio_files([good, wrong], decode=decode)
        assert u.id == "wrong" and reason == f"manifest duration 1 s but the audio is {real:.2f} s long"
