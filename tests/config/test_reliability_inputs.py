"""Bad input files: every fault is a ConfigError / ManifestError naming the file (and the line), never a
traceback, never a silently wrong value, never a hang. Each test writes real files to tmp_path and
its docstring says what the harness did before."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.config import ConfigError, load_config
from harness.data.manifest import ManifestError, read_manifest
from harness.experiments.study import load_study

REPO = Path(__file__).resolve().parents[2]

# A study of tiny models (no model files needed); tests append their sections to it.
HEAD = """\
name: inputs
base:
  encoder: {name: 'tiny:whisper'}
  llm: {name: 'tiny:llama'}
  adapter: {hidden: 64}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "f.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def study(tmp_path: Path, tail: str, head: str = HEAD) -> Path:
    return write(tmp_path, head + textwrap.dedent(tail), "study.yaml")


def config_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    return str(e.value)


# ------------------------------------------------------------------------------ YAML: duplicates, bombs, nesting


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("train:\n  lr: 0.1\nadapter:\n  k: 3\ntrain:\n  max_steps: 4\n", 5, "train"),  # a whole section twice
        ("train:\n  lr: 0.1\n  max_steps: 4\n  lr: 0.2\n", 4, "lr"),  # a key twice inside a section
        ("adapter: {k: 2, hidden: 8, k: 3}\n", 1, "k"),  # a flow mapping
    ],
)
def test_duplicate_yaml_key_names_its_line(tmp_path: Path, text: str, line: int, key: str) -> None:
    """Before: PyYAML kept the last value and dropped the first one silently (`train:` twice ran with
    only the second section)."""
    path = write(tmp_path, text)
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:{line}: duplicate key {key!r}"), msg


def test_duplicate_key_in_a_study_and_in_an_override(tmp_path: Path) -> None:
    """Before: a study's `axes` with `adapter.k` twice ran only the second list, and an override
    `data.test={a: x, a: y}` silently kept one split."""
    path = study(tmp_path, "axes:\n  adapter.k: [2, 5]\n  train.lr: [0.1]\n  adapter.k: [10]\n")
    assert config_error(load_study, path).startswith(f"{path}:9: duplicate key 'adapter.k' (first written on line 7")
    msg = config_error(load_config, None, ["data.test={a: x.jsonl, a: y.jsonl}"])
    assert msg.startswith("override 'data.test={a: x.jsonl, a: y.jsonl}'") and "duplicate key 'a'" in msg


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("loader", ["load_config", "load_study"])
def test_alias_bomb_is_refused_in_seconds(tmp_path: Path, loader: str) -> None:
    """Before: this 0.4-KB file (9 levels of 9 aliases, 10**9 values) made the line-number walk of
    read_yaml run for minutes and take tens of GB."""
    assert len(BOMB) < 1024
    path = write(tmp_path, ("name: bomb\n" if loader == "load_study" else "") + BOMB)
    code = (f"from harness.config import ConfigError\nfrom harness.experiments.study import load_study\n"
            f"from harness.config import load_config\n"
            f"try:\n    {loader}({str(path)!r})\nexcept ConfigError as e:\n    print(e)\n")
    # A hang guard, not a benchmark: the check itself takes milliseconds. The memory cap keeps a
    # regression from taking the machine's memory with it.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{path}: ") and "aliases are expanded" in out.stdout, out.stdout


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    """Before: an anchor that contains its own alias built a recursive list, and the line-number walk
    recursed until RecursionError."""
    path = write(tmp_path, "train: &t\n  - *t\n")
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:1: the collection anchored here contains an alias to itself"), msg


@pytest.mark.parametrize("depth", [150, 3000])
def test_deep_nesting_is_refused_with_its_line(tmp_path: Path, depth: int) -> None:
    """Before: a deeply nested value crashed PyYAML's recursive composer with RecursionError (a traceback)."""
    path = write(tmp_path, "train:\n  lr: " + "[" * depth + "]" * depth + "\n")
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:2: invalid YAML: collections nested deeper than 100 levels"), msg
    msg = config_error(load_config, None, ["llm.lora.target_modules=" + "[" * depth + "]" * depth])
    assert msg.startswith("override 'llm.lora.target_modules=") and "nested deeper" in msg


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("2024-13-45", "month must be in 1..12"),  # matches the timestamp pattern, then fails to convert
        ("9" * 5000, "Exceeds the limit (4300 digits)"),  # Python refuses to convert such an int
        ("!!float abc", "could not convert string to float"),
    ],
)
def test_yaml_values_python_cannot_convert_name_their_line(tmp_path: Path, value: str, needle: str) -> None:
    """Before: the ValueError of the conversion escaped read_yaml as a traceback without file or line."""
    path = write(tmp_path, f"train:\n  max_steps: {value}\n")
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:2: invalid YAML: cannot read the value") and needle in msg, msg


def test_non_utf8_yaml_names_file_and_line(tmp_path: Path) -> None:
    """Before: path.read_text() raised UnicodeDecodeError, a traceback that names neither file nor line."""
    path = write(tmp_path, b"train:\n  lr: 0.1\n  # caf\xe9 in Latin-1\n")
    assert config_error(load_config, path).startswith(f"{path}:3: not UTF-8 text (byte 0xe9")


def test_huge_yaml_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """Before: any file was read whole and parsed (a multi-GB file of one line exhausts memory)."""
    path = write(tmp_path, "train: {lr: 0.1}\n# " + "x" * (2 << 20) + "\n")
    assert config_error(load_config, path) == f"{path}: larger than 1048576 bytes; not a config or study file"


# ------------------------------------------------------------------------------ config values


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("train:\n  lr: .inf\n", "train.lr", "a finite float, got inf"),  # passed `lr > 0`
        ("train:\n  lr: .nan\n", "train.lr", "a finite float, got nan"),
        ("train:\n  lr: 1e999\n", "train.lr", "a finite float, got inf"),
        ("train:\n  weight_decay: .inf\n", "train.weight_decay", "a finite float, got inf"),
        ("data:\n  max_duration: .inf\n", "data.max_duration", "a finite float, got inf"),
        ("llm:\n  lora:\n    dropout: .nan\n", "llm.lora.dropout", "a finite float, got nan"),
        ("train:\n  clip: .inf\n", "train.clip", "a finite float or null, got inf"),
        ("decode:\n  tokens_per_second: .nan\n", "decode.tokens_per_second", "a finite float or null, got nan"),
    ],
)
def test_non_finite_floats_are_refused(tmp_path: Path, text: str, key: str, expected: str) -> None:
    """Before: inf passed `lr > 0` (and nan passes any check written as `not v < x`): the run trained
    with an infinite learning rate or never clipped."""
    path = write(tmp_path, text)
    line = text.count("\n")
    assert config_error(load_config, path) == f"{path}:{line}: {key}: expected {expected}"


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=.nan", "train.clip=-.inf", "train.batch_seconds=.inf"])
def test_non_finite_overrides_are_refused(override: str) -> None:
    """Before: `train.lr=.inf` on the command line passed validation."""
    msg = config_error(load_config, None, [override])
    assert msg.startswith(f"override {override!r}: {override.split('=')[0]}: expected a finite float"), msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  max_steps: 1180591620717411303424\n", "train.max_steps: expected int within +-2**63"),
        ("train:\n  lr: 1" + "0" * 400 + "\n", "train.lr: expected a finite float"),  # float() of it overflowed
    ],
)
def test_numbers_beyond_machine_range_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """Before: a 2**70 step count passed `>= 1` (and crashed later in torch); a 400-digit int for a
    float setting raised OverflowError in float(), a traceback."""
    path = write(tmp_path, text)
    assert config_error(load_config, path).startswith(f"{path}:2: {expected}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data:\n  test: {null: a.jsonl}\n", "got the key None"),  # became the split 'None'
        ("data:\n  test: {1: a.jsonl, '1': b.jsonl}\n", "got the key 1"),  # 1 and '1' became one split
    ],
)
def test_mapping_settings_need_string_keys(tmp_path: Path, text: str, needle: str) -> None:
    """Before: keys of data.test were passed through str(): `null` became a split named 'None' and
    `1` / `'1'` collapsed into one split, silently."""
    path = write(tmp_path, text)
    msg = config_error(load_config, path)
    assert msg.startswith(f"{path}:2: data.test: expected a mapping of str with string keys") and needle in msg


def test_non_string_keys_are_reported_at_their_line(tmp_path: Path) -> None:
    """Before: the line map held the key as written (`null`) and the error looked up 'None': the
    message named the file but no line."""
    path = write(tmp_path, "train:\n  lr: 0.1\nnull: 3\n")
    assert config_error(load_config, path).startswith(f"{path}:3: unknown key 'None'")


@pytest.mark.parametrize(("text", "got"), [("- train\n- lr\n", "list"), ("false\n", "bool"), ("0\n", "int")])
def test_config_file_must_be_a_mapping_also_with_overrides(tmp_path: Path, text: str, got: str) -> None:
    """Before: a top-level list with an override crashed in set_path with AttributeError, and a file
    holding just `false` or `0` was silently read as the defaults."""
    path = write(tmp_path, text)
    msg = config_error(load_config, path, ["train.lr=0.1"])
    assert msg == f"{path}: expected a mapping of sections (data, encoder, adapter, llm, train, decode), got {got}"


# ------------------------------------------------------------------------------ studies: keys of axes, zip, include


@pytest.mark.parametrize(
    ("tail", "line", "needle"),
    [
        ("axes:\n  adapter.kk: [2, 5]\n", 7, "unknown key 'adapter.kk' (did you mean 'k'?). Valid keys of adapter:"),
        ("zip:\n  - {llm.prompt_stlye: [chat, plain], llm.casing: [lower, upper]}\n", 7,
         "unknown key 'llm.prompt_stlye' (did you mean 'prompt_style'?). Valid keys of llm:"),
        ("include:\n  - {adapter.k: 3}\n  - {trian.lr: 0.1}\n", 8,
         "unknown key 'trian' (did you mean 'train'?). Valid keys of the run config:"),
        ("axes:\n  adapter.k.x: [2]\n", 7, "adapter.k.x: 'adapter.k' is a setting (int), not a section"),
        ("axes:\n  1: [2]\n", 7, "expected a setting such as 'adapter.k' (a string), got 1"),
        ("axes:\n  adapter: [{k: 2}]\n", 7, "adapter: expected a setting, got the section 'adapter'"),
    ],
)
def test_bad_keys_in_axes_zip_include_are_config_errors(tmp_path: Path, tail: str, line: int, needle: str) -> None:
    """Before: a misspelled key crashed with AttributeError: 'AdapterConfig' object has no attribute
    ... (via get_path); `adapter.k.x` was blamed on an 'override' without a line; a section as an axis
    replaced the base's whole section and named the run 'adapter=AdapterConfig(...)'."""
    path = study(tmp_path, tail)
    msg = config_error(load_study, path)
    assert msg.startswith(f"{path}:{line}: ") and needle in msg, msg


def test_bad_values_in_axes_zip_include_blame_their_own_line(tmp_path: Path) -> None:
    """Before: a bad value was blamed on the first line that wrote its key anywhere: include[1]'s
    error pointed at include[0], an item of a block list at the list's key."""
    tail = "include:\n  - {adapter.k: 3}\n  - {adapter.k: five}\n"
    path = study(tmp_path, tail)
    assert config_error(load_study, path).startswith(f"{path}:8: adapter.k: expected int, got 'five'")
    path = study(tmp_path, "zip:\n  - adapter.k:\n      - 2\n      - 0\n    train.lr: [0.1, 0.2]\n")
    assert config_error(load_study, path).startswith(f"{path}:9: adapter.k: expected >= 1, got 0")
    path = study(tmp_path, "axes:\n  train.lr: [0.1, true]\n")  # a boolean where a number is expected
    assert config_error(load_study, path).startswith(f"{path}:7: train.lr: expected float, got True")


def test_include_may_add_a_test_split(tmp_path: Path) -> None:
    """Before: an include that sets `data.test.ls` crashed with KeyError: 'ls' (get_path into the
    base's test splits)."""
    st = load_study(study(tmp_path, "include:\n  - {data.test.ls: ls.jsonl}\n"))
    assert [c.name for c in st.cells] == ["base", "ls=ls.jsonl"]
    assert st.cells[1].config.data.test == {"ls": "ls.jsonl"}


def test_study_override_errors_blame_the_override(tmp_path: Path) -> None:
    """Before: `harness study run s.yaml train.lr=0` was reported at the study file's line of
    `train.lr` (a value the override had replaced)."""
    path = study(tmp_path, "", HEAD + "  train: {lr: 0.1}\n")
    msg = config_error(load_study, path, ["train.lr=0"])
    assert msg.startswith("override 'train.lr=0': train.lr: expected > 0"), msg


def test_study_override_of_an_axis_is_refused(tmp_path: Path) -> None:
    """Before: `harness study run s.yaml adapter.k=3` on a study with an `adapter.k` axis was silently
    ignored: every cell set the axis value over it."""
    path = study(tmp_path, "axes:\n  adapter.k: [2, 5]\n")
    msg = config_error(load_study, path, ["adapter.k=3"])
    assert msg.startswith("override 'adapter.k=3': adapter.k is an axis of this study"), msg
    assert len(load_study(path, ["train.lr=0.01"]).cells) == 2  # other keys are fine


# ------------------------------------------------------------------------------ studies: exclude


AXES = "axes:\n  adapter.k: [2, 5]\n  encoder.trainable: [false, true]\n"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("{adapter.kk: 5}",
         "exclude[0]: 'adapter.kk' is not an axis or zip key of this study (did you mean 'adapter.k'?)"),
        ("{train.lr: 0.1}", "exclude[0]: 'train.lr' is not an axis or zip key of this study. Axis keys: adapter.k, "
                            "encoder.trainable"),
        ("{adapter.k: five}", "adapter.k: expected int, got 'five'"),
        ("{encoder.trainable: 0}", "encoder.trainable: expected bool, got 0"),  # 0 == False matched the frozen cells
        ("{adapter.k: 7}", "exclude[0]: {'adapter.k': 7} matches no cell of the product, so it would drop nothing. "
                           "The product's values: adapter.k: [2, 5]"),
        ("{}", "exclude[0]: an empty entry would drop every cell"),
    ],
)
def test_exclude_entries_are_validated(tmp_path: Path, entry: str, needle: str) -> None:
    """Before: an exclude entry with a misspelled key, a key that is no axis, a value of the wrong type
    or a value no cell has matched nothing and was ignored: the cells meant to be dropped ran. And
    `encoder.trainable: 0` matched `false` (0 == False) and dropped cells nobody asked to drop."""
    path = study(tmp_path, AXES + f"exclude:\n  - {{adapter.k: 2, encoder.trainable: true}}\n  - {entry}\n")
    msg = config_error(load_study, path)
    assert msg.startswith(f"{path}:11: ") and needle.replace("exclude[0]", "exclude[1]") in msg, msg


def test_exclude_values_are_typed_like_config_values(tmp_path: Path) -> None:
    """Before: values were compared raw, so `adapter.k: true` silently dropped the k=1 cells (True == 1)."""
    st = load_study(study(tmp_path, "axes:\n  train.lr: [1.0, 0.5]\nexclude:\n  - {train.lr: 1}\n"))
    assert [c.config.train.lr for c in st.cells] == [0.5]  # an int for a float setting is that float
    path = study(tmp_path, "axes:\n  adapter.k: [1, 2]\nexclude:\n  - {adapter.k: true}\n")
    assert config_error(load_study, path).startswith(f"{path}:9: adapter.k: expected int, got True")


def test_exclude_that_drops_every_cell_is_an_error(tmp_path: Path) -> None:
    """Before: a study whose excludes dropped the whole product loaded with no cells and ran nothing."""
    path = study(tmp_path, "axes:\n  adapter.k: [2, 5]\nexclude:\n  - {adapter.k: 2}\n  - {adapter.k: 5}\n")
    assert "the study has no cells" in config_error(load_study, path)


# ------------------------------------------------------------------------------ studies: names and sections


@pytest.mark.parametrize("name", ["../../x", "bob's study", ".hidden", "a/b", "x y", "'\"", "é", "a" * 101, "12\n"])
def test_unsafe_study_names_are_refused(tmp_path: Path, name: str) -> None:
    """Before: `../../x` put checkpoints outside the runs root (runs_root/name/cell), and a quote
    crashed every run inside MLflow's search filter (`tags.harness.study = 'bob's study'`)."""
    path = study(tmp_path, "", HEAD.replace("name: inputs", f"name: {json.dumps(name)}"))
    msg = config_error(load_study, path)
    assert msg.startswith(f"{path}:1: name: expected letters, digits and _ . + -") and msg.endswith(f"got {name!r}")


def test_unsafe_experiment_name_and_unknown_tracking_keys_are_refused(tmp_path: Path) -> None:
    """Before: `tracking.experiment` became the MLflow experiment (and its artifact folder) unchecked,
    and a misspelled tracking key was ignored."""
    path = study(tmp_path, "tracking: {experiment: ../elsewhere}\n")
    assert config_error(load_study, path).startswith(f"{path}:6: tracking.experiment: expected letters")
    path = study(tmp_path, "tracking: {experment: x}\n")
    msg = config_error(load_study, path)
    assert msg.startswith(f"{path}:6: unknown tracking key 'experment' (did you mean 'experiment'?)"), msg
    assert load_study(study(tmp_path, "tracking: {experiment: other-exp_1.0}\n")).experiment == "other-exp_1.0"


@pytest.mark.parametrize(
    ("tail", "line", "needle"),
    [
        ("axes: []\n", 6, "axes: expected a mapping, got list"),
        ("zip: {}\n", 6, "zip: expected a list of mappings"),
        ("zip:\n  - {}\n", 7, "zip[0]: expected settings with lists of values, got an empty mapping"),
        ("include: {adapter.k: 3}\n", 6, "include: expected a list of mappings"),
        ("description: [1, 2]\n", 6, "description: expected a string, got [1, 2]"),
    ],
)
def test_study_sections_of_the_wrong_kind(tmp_path: Path, tail: str, line: int, needle: str) -> None:
    """Before: `axes: []` and `zip: {}` were read as empty (via `or`), `zip: [{}]` crashed with
    StopIteration, `include:` as a mapping gave 'include[0]: expected a mapping, got str', a list
    description was str()-ed."""
    path = study(tmp_path, tail)
    msg = config_error(load_study, path)
    assert msg.startswith(f"{path}:{line}: ") and needle in msg, msg


def test_base_of_the_wrong_kind_and_a_null_description(tmp_path: Path) -> None:
    """Before: `base: []` was silently the default config, and `description: null` became 'None'."""
    path = write(tmp_path, "name: s\nbase: []\n", "s.yaml")
    assert config_error(load_study, path).startswith(f"{path}:2: base: expected a mapping, got list")
    st = load_study(study(tmp_path, "description: null\n"))
    assert st.description == ""


# ------------------------------------------------------------------------------ manifests


ROW = {"id": "u1", "audio": "a.flac", "text": "HELLO", "duration": 1.5}


def manifest(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def manifest_error(path: Path) -> str:
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    return str(e.value)


def test_manifest_key_written_twice(tmp_path: Path) -> None:
    """Before: json.loads kept the last `id` of `{"id": "a", ..., "id": "b"}` silently."""
    path = manifest(tmp_path, json.dumps(ROW), '{"id": "a", "audio": "a.flac", "text": "HI", "duration": 1, "id": "b"}')
    assert manifest_error(path).startswith(f"{path}:2: key 'id' written twice")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"text": "HI", "duration": 1' + "0" * 400, "'duration' must be a non-negative number of seconds"),
        ('"text": "HI", "duration": 1' + "0" * 5000, "unreadable JSON (ValueError: Exceeds the limit"),
        ('"text": "HI", "duration": 1, "x": ' + "[" * 100_000 + "]" * 100_000, "unreadable JSON (RecursionError"),
        ('"text": 5, "duration": 1', "'text' must be a non-empty string, got 5"),  # was 'empty or whitespace-only'
    ],
)
def test_manifest_values_python_cannot_hold(tmp_path: Path, value: str, needle: str) -> None:
    """Before: a 400-digit duration raised OverflowError in math.isfinite, a 5000-digit one ValueError,
    deep nesting RecursionError (tracebacks); a number as text was called 'empty'."""
    row = '{"id": "u2", "audio": "a.flac", ' + value + "}"
    path = manifest(tmp_path, json.dumps(ROW), row)
    msg = manifest_error(path)
    assert msg.startswith(f"{path}:2: ") and needle in msg, msg


@pytest.mark.parametrize(
    ("field", "raw", "needle"),
    [("text", '"\\ud800"', "'text' is not valid Unicode (a lone surrogate)"),
     ("audio", '"a\\u0000.flac"', "'audio' must be a non-empty path string without NUL characters")],
)
def test_manifest_strings_utf8_and_paths_cannot_hold(tmp_path: Path, field: str, raw: str, needle: str) -> None:
    """Before: a lone surrogate was accepted and crashed later when the transcript was written as UTF-8;
    a NUL in a path was accepted as a missing file."""
    row = json.dumps(ROW).replace(f'"{field}": {json.dumps(ROW[field])}', f'"{field}": {raw}')
    path = manifest(tmp_path, row)
    assert manifest_error(path).startswith(f"{path}:1: {needle}")


def test_manifest_non_utf8_names_its_line(tmp_path: Path) -> None:
    """Before: UnicodeDecodeError escaped read_manifest, a traceback without file or line."""
    path = manifest(tmp_path, json.dumps(ROW), json.dumps({**ROW, "id": "u2"}).encode().replace(b"HELLO", b"H\xe9LLO"))
    assert manifest_error(path).startswith(f"{path}:2: not UTF-8 text")


def test_manifest_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """Before: a manifest saved with a UTF-8 BOM (Windows editors) failed on line 1 as malformed JSON."""
    path = manifest(tmp_path, b"\xef\xbb\xbf" + json.dumps(ROW).encode())
    assert [u.id for u in read_manifest(path)] == ["u1"]


def test_manifest_huge_line_is_refused(tmp_path: Path) -> None:
    """Before: a line was read whole however long (a multi-GB file of one line exhausts memory) and a
    2-MB transcript was accepted."""
    path = manifest(tmp_path, json.dumps(ROW), json.dumps({**ROW, "id": "u2", "text": "A" * (2 << 20)}))
    assert manifest_error(path) == f"{path}:2: line longer than 1048576 characters"


def test_manifest_that_is_a_folder(tmp_path: Path) -> None:
    """Before: IsADirectoryError escaped as a traceback."""
    folder = tmp_path / "m.jsonl"
    folder.mkdir()
    assert manifest_error(folder).startswith(f"{folder}: cannot read: ")
