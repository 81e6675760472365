"""A seeded fuzz of the ``search:`` section (docs/reliability.md): a few hundred broken copies of
studies/search_quickstart.yaml, each a deleted key, a renamed key or a value of another type
anywhere under ``search``, must load or end in a ``ConfigError`` that names the file. The old loader
raised ``TypeError: unhashable type`` for a mapping or list where a sampler, pruner or parameter
type was expected."""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config import ConfigError
from harness.experiments.search import load_search
from harness.experiments.study import load_study

ROOT = Path(__file__).resolve().parents[2]
VALUES: list[Any] = [
    None, 0, -1, 1.5, "x", [], {}, [1], {"a": 1}, True, float("inf"), float("nan"), "1e-3", {"type": "float"},
    {"type": "categorical", "choices": []}, {"type": "int", "low": 5, "high": 1}, {"type": "float", "low": 1, "high": 2, "step": 0},
    [{"type": "tpe"}], "tpe", "grid", {"type": "grid"},
]


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in _paths(doc["search"], ("search",))])
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = rng.random()
    if op < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
    elif op < 0.45 and isinstance(parent, dict):
        parent[f"{path[-1]}x"] = parent.pop(path[-1])
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    return doc


def test_broken_search_sections_end_in_a_config_error_naming_the_file(tmp_path: Path) -> None:
    source = yaml.safe_load((ROOT / "studies" / "search_quickstart.yaml").read_text())
    rng = random.Random(17)
    errors = 0
    for n in range(250):
        path = tmp_path / f"search{n}.yaml"
        path.write_text(yaml.safe_dump(_mutate(source, rng), sort_keys=False))
        start = time.monotonic()
        try:
            load_search(load_study(path))
        except ConfigError as e:
            errors += 1
            assert str(path) in str(e), e
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{path}: {type(e).__name__}: {e}\n{path.read_text()}")
        assert time.monotonic() - start < 10, f"{path} took over 10 s to load (hang guard)"
    assert errors > 100  # the mutations do break most files
