"""Seeded fuzzing of the input loaders: broken study files and manifests made from real valid ones.

Every broken file must either load or end in the loader's own error (``ConfigError`` for studies,
``ManifestError`` for manifests) whose message starts with the file's path (and a plausible line
number where it gives one), never any other exception, and within a generous time bound per file
(a hang guard, not a benchmark). The seeds are fixed, so a failure reproduces; the report shows the
mutations and the broken text.
"""
from __future__ import annotations

import random
import re
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.data.manifest import ManifestError, read_manifest, write_manifest
from harness.experiments.study import load_study

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "studies" / "quickstart.yaml", REPO / "studies" / "mini_adapter.yaml"]
STUDY_CASES = 150  # per source study (~10 ms each once the model registries are imported)
MANIFEST_CASES = 200
LIMIT_S = 20.0  # per file

YAML_TOKENS = [
    "null", "~", "true", "false", "0", "-1", "3.5", ".inf", "-.inf", ".nan", "1e999", "9" * 30, "9" * 5000,
    "2024-13-45", "2024-01-01", "''", '"x"', "[]", "{}", "[1, [2, [3]]]", "{a: 1}", "*nope", "&a x", "!!binary Zm9v",
    "!!float abc", "!!python/object/apply:os.system [true]", "'unterminated", "[", "{", ": :", "- -", "\t", "x: y: z",
    "|", ">", "pack:nope", "tiny:", "hf:", "../../x", "bob's", "<<: *a", "? [a]", "\"\\ud800\"", "%", "@", "`",
]
KEY_TOKENS = ["1", "null", "true", "[a]", "? [a, b]", "''", '"x y"', "adapter.kk", "train", "axes", "<<", "1.5"]
JSON_VALUES = [
    "null", "[]", "{}", "5", "-1", "0", "true", "NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400,
    "1" + "0" * 5000, '""', '"   "', '"\\ud800"', '"a\\u0000b"', '"x"', "[[1]]", '{"a": 1}', "-0.0", "1.5",
]


class Hang(Exception):
    pass


def _guarded(fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()`` under a SIGALRM hang guard of LIMIT_S seconds; returns (result or exception, seconds)."""
    def alarm(*_):
        raise Hang(f"still running after {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    start = time.perf_counter()
    try:
        return fn(), time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - classified by the caller
        return e, time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------ YAML mutations (text lines)


def _value_line(rng: random.Random, lines: list[str]) -> int | None:
    candidates = [i for i, ln in enumerate(lines) if re.match(r"^\s*[^#\s][^:]*:\s*\S", ln)]
    return rng.choice(candidates) if candidates else None


def y_delete(rng, lines):
    if lines:
        del lines[rng.randrange(len(lines))]


def y_duplicate(rng, lines):
    if lines:
        i = rng.randrange(len(lines))
        lines.insert(rng.choice([i + 1, rng.randrange(len(lines) + 1)]), lines[i])


def y_swap_value(rng, lines):
    i = _value_line(rng, lines)
    if i is not None:
        key, _, _ = lines[i].partition(":")
        lines[i] = f"{key}: {rng.choice(YAML_TOKENS)}"


def y_swap_flow_value(rng, lines):
    flows = [i for i, ln in enumerate(lines) if re.search(r"[{\[,]\s*[\w.:-]+\s*[,\]}]|:\s*[\w.-]+\s*[,}]", ln)]
    if flows:
        i = rng.choice(flows)
        items = list(re.finditer(r"(?<=[\[{,:]) ?[\w.:/-]+(?=\s*[,\]}])", lines[i]))
        if items:
            m = rng.choice(items)
            lines[i] = lines[i][: m.start()] + " " + rng.choice(YAML_TOKENS) + lines[i][m.end():]


def y_duplicate_key(rng, lines):
    i = _value_line(rng, lines)
    if i is not None:
        key, _, _ = lines[i].partition(":")
        lines.insert(i + 1, f"{key}: {rng.choice(YAML_TOKENS[:12])}")


def y_deep(rng, lines):
    i = _value_line(rng, lines)
    if i is not None:
        n = rng.choice([20, 99, 101, 300, 3000])
        key, _, _ = lines[i].partition(":")
        nest = "[" * n + "]" * n if rng.random() < 0.5 else "{a: " * n + "1" + "}" * n
        lines[i] = f"{key}: {nest}"


def y_reindent(rng, lines):
    if lines:
        i = rng.randrange(len(lines))
        lines[i] = (" " * rng.randint(1, 3) + lines[i]) if rng.random() < 0.5 else lines[i].lstrip()


def y_typo_key(rng, lines):
    i = _value_line(rng, lines)
    if i is not None:
        key, sep, rest = lines[i].partition(":")
        pos = rng.randrange(len(key))
        key = key[:pos] + rng.choice("abcxyz._ ") + key[pos + 1:]
        lines[i] = key + sep + rest


def y_key_type(rng, lines):
    i = _value_line(rng, lines)
    if i is not None:
        key, sep, rest = lines[i].partition(":")
        indent = key[: len(key) - len(key.lstrip())]
        lines[i] = indent + rng.choice(KEY_TOKENS) + sep + rest


def y_add_section(rng, lines):
    axis = rng.choice(["adapter.k", "adapter.projector", "encoder.name", "llm.name", "adapter.kk", "train.lr", "1"])
    value = rng.choice(YAML_TOKENS[:16] + ["10", "linear", "pack:whisper-base", "pack:whisper-tiny.en"])
    section = rng.choice([
        f"exclude:\n  - {{{axis}: {value}}}", f"include:\n  - {{{axis}: {value}}}", f"zip:\n  - {{{axis}: [{value}]}}",
        f"exclude: {value}", f"include: {value}", f"zip: {value}", f"tracking: {{experiment: {value}}}",
        f"tracking: {value}", f"description: {value}", f"name: {value}", f"base: {value}", f"axes: {value}",
        f"axes:\n  {axis}: [{value}, {value}]", f"search: {value}",
    ])
    lines.extend(section.splitlines())


def y_aliases(rng, lines):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(rng.choice([2, 5, 8]))
    ]
    lines.extend(rng.choice([bomb, ["r: &r [*r]"], ["m: &m {k: 1}", "n: {<<: *m, k: 2}"], ["x: *undefined"]]))


YAML_MUTATIONS = [y_delete, y_duplicate, y_swap_value, y_swap_flow_value, y_duplicate_key, y_deep, y_reindent,
                  y_typo_key, y_key_type, y_add_section, y_aliases]


def _corrupt_bytes(rng: random.Random, data: bytes) -> bytes:
    """Random byte-level damage: replaced bytes (invalid UTF-8, NUL, quotes), a cut, a BOM."""
    data = bytearray(data)
    kind = rng.choice(["replace", "truncate", "bom", "insert"])
    if kind == "replace" and data:
        for _ in range(rng.randint(1, 4)):
            byte = rng.choice([0, 0x80, 0xC3, 0xFF, 0x22, 0x27, 0x3A, 0x09, rng.randrange(256)])
            data[rng.randrange(len(data))] = byte
    elif kind == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == "bom":
        data = bytearray(b"\xef\xbb\xbf") + data
    else:
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = rng.choice([b"\r", b"\r\n", b"\x00", b"\xe9", b"\xf0\x9f\x98", b"\n\n", b" #", b"\t"])
    return bytes(data)


def _broken_study(rng: random.Random, text: str) -> tuple[bytes, list[str]]:
    lines = text.splitlines()
    names = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(YAML_MUTATIONS)
        mutation(rng, lines)
        names.append(mutation.__name__)
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        data = _corrupt_bytes(rng, data)
        names.append("corrupt_bytes")
    return data, names


# ------------------------------------------------------------------------------ checking outcomes


def _check(path: Path, outcome: object, seconds: float, expected: type[Exception], n_lines: int) -> str | None:
    """None when the outcome is acceptable, else what was wrong."""
    if seconds > LIMIT_S or isinstance(outcome, Hang):
        return f"took {seconds:.1f} s"
    if not isinstance(outcome, BaseException):
        return None
    if not isinstance(outcome, expected):
        return "".join(traceback.format_exception(outcome))[-3000:]
    msg = str(outcome)
    m = re.match(rf"{re.escape(str(path))}(?::(\d+))?: ", msg)
    if not m:
        return f"message does not start with the file: {msg[:300]}"
    if m.group(1) and not 1 <= int(m.group(1)) <= n_lines + 1:
        return f"line {m.group(1)} is outside the file ({n_lines} lines): {msg[:300]}"
    return None


def _report(problems: list[tuple[list[str], bytes, str]]) -> str:
    shown = [f"--- mutations {names}\n{data[:600]!r}\n{why}" for names, data, why in problems[:5]]
    return f"{len(problems)} bad outcomes; the first ones:\n" + "\n".join(shown)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_broken_studies_load_or_name_the_file(tmp_path: Path, source: Path) -> None:
    rng = random.Random(f"study:{source.name}:1")
    text = source.read_text()
    load_study(source)  # the original is valid (and the model registries are imported outside the timing)
    problems, outcomes = [], Counter()
    for i in range(STUDY_CASES):
        data, names = _broken_study(rng, text)
        path = tmp_path / f"{i}.yaml"
        path.write_bytes(data)
        outcome, seconds = _guarded(lambda: load_study(path))
        outcomes[type(outcome).__name__] += 1
        why = _check(path, outcome, seconds, ConfigError, data.count(b"\n"))
        if why:
            problems.append((names, data, why))
    assert not problems, _report(problems)
    # The fuzzing reaches both sides: some broken files still load, most are refused.
    print(source.name, dict(outcomes))
    assert outcomes["Study"] > 0 and outcomes["ConfigError"] > STUDY_CASES // 2, outcomes


# ------------------------------------------------------------------------------ manifests


def _json_swap(rng: random.Random, line: str) -> str:
    key = rng.choice(["id", "audio", "text", "duration", "speaker"])
    new = f'"{key}": {rng.choice(JSON_VALUES)}'
    replaced, n = re.subn(rf'"{key}": ("(?:[^"\\]|\\.)*"|[^,}}]+)', lambda _: new, line, count=1)
    return replaced if n else line.replace("{", "{" + new + ", ", 1)


def m_swap(rng, lines):
    i = rng.randrange(len(lines))
    lines[i] = _json_swap(rng, lines[i])


def m_dup_key(rng, lines):
    i = rng.randrange(len(lines))
    lines[i] = lines[i].replace("{", '{"' + rng.choice(["id", "text", "duration", "x"]) + '": "dup", ', 1)


def m_structure(rng, lines):
    i = rng.randrange(len(lines))
    n = rng.choice([10, 1000, 100_000])
    lines[i] = rng.choice([
        "", "[1]", '"x"', "1", "null", "{}", lines[i] + lines[(i + 1) % len(lines)], lines[i][: len(lines[i]) // 2],
        lines[i].replace("}", ', "x": ' + "[" * n + "]" * n + "}"), lines[i].replace("{", "{" * n),
    ])


def m_lines(rng, lines):
    i = rng.randrange(len(lines))
    rng.choice([lambda: lines.pop(i), lambda: lines.insert(i, lines[i]), lambda: lines.insert(i, " \t ")])()


def m_huge(rng, lines):
    i = rng.randrange(len(lines))
    lines[i] = lines[i].replace('"text": "', '"text": "' + "A" * rng.choice([1000, (1 << 20) + 10]), 1)


MANIFEST_MUTATIONS = [m_swap, m_swap, m_dup_key, m_structure, m_lines, m_huge]


def _broken_manifest(rng: random.Random, lines: list[str]) -> tuple[bytes, list[str]]:
    lines = list(lines)
    names = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(MANIFEST_MUTATIONS if rng.random() < 0.9 else [m_huge])
        mutation(rng, lines)
        names.append(mutation.__name__)
    data = "".join(ln + "\n" for ln in lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.25:
        data = _corrupt_bytes(rng, data)
        names.append("corrupt_bytes")
    return data, names


def test_broken_manifests_load_or_name_file_and_line(tmp_path: Path, libri: dict[str, list]) -> None:
    rng = random.Random("manifest:1")
    valid = tmp_path / "valid.jsonl"
    utts = [u for split in sorted(libri) for u in libri[split]]
    write_manifest(valid, utts)
    lines = valid.read_text().splitlines()
    assert [u.id for u in read_manifest(valid)] == [u.id for u in utts]
    problems, outcomes = [], Counter()
    for i in range(MANIFEST_CASES):
        data, names = _broken_manifest(rng, lines)
        path = tmp_path / f"{i}.jsonl"
        path.write_bytes(data)
        outcome, seconds = _guarded(lambda: read_manifest(path))
        outcomes[type(outcome).__name__] += 1
        why = _check(path, outcome, seconds, ManifestError, data.count(b"\n"))
        with_line = re.match(rf"{re.escape(str(path))}:\d+: ", str(outcome))
        if not why and isinstance(outcome, ManifestError) and not with_line:
            why = f"no line number: {outcome}"  # every fault of a readable manifest is on some line
        if why:
            problems.append((names, data, why))
    assert not problems, _report(problems)
    print(dict(outcomes))
    assert outcomes["list"] > 0 and outcomes["ManifestError"] > MANIFEST_CASES // 2, outcomes
