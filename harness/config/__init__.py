"""Typed, frozen run configuration: YAML + ``a.b=v`` overrides -> :class:`RunConfig`.

- :mod:`~harness.config.run`: the experiment tree, one frozen dataclass per section, a docstring per
  field; fields marked ``EXECUTION`` say how a run executes and are not part of its identity.
- :mod:`~harness.config.loading`: mappings -> checked, canonical dataclasses; did-you-mean for keys.
- :mod:`~harness.config.yamlfile`: YAML with a line for every key, and limits.
- :mod:`~harness.config.identity`: the run's identity (experiment settings, manifests by content).

Validation raises :class:`ConfigError` naming the key (and the file and line when the value came
from a YAML file) and never repairs a value; the logged configuration is exactly the resolved one.

Example::

    >>> cfg = load_config(None, ["adapter.k=10", "train.lr=1e-4"])
    >>> cfg.adapter.k, cfg.train.lr
    (10, 0.0001)
"""
from harness.config.errors import ConfigError, show
from harness.config.identity import (
    canonical_json,
    config_hash,
    execution_dict,
    experiment_dict,
    legacy_hashes,
    manifest_digest,
)
from harness.config.keys import get_path, set_path
from harness.config.loading import (
    build_config,
    coerce_setting,
    coerce_value,
    flatten,
    load_config,
    setting_type,
    to_dict,
    to_yaml,
)
from harness.config.run import (
    EXECUTION,
    MOVED,
    AdapterConfig,
    CTCConfig,
    DataConfig,
    DecodeConfig,
    EncoderConfig,
    FrozenDict,
    LLMConfig,
    LoraConfig,
    QFormerOptions,
    RunConfig,
    TrainConfig,
    WhisperOptions,
    is_execution,
)
from harness.config.yamlfile import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    DuplicateKeyError,
    SourceMap,
    YamlLoader,
    parse_override,
    read_yaml,
    yaml_load,
)

__all__ = [
    "EXECUTION", "MAX_YAML_BYTES", "MOVED", "MAX_YAML_DEPTH", "MAX_YAML_VALUES", "AdapterConfig", "CTCConfig",
    "ConfigError", "DataConfig", "DecodeConfig", "DuplicateKeyError", "EncoderConfig", "FrozenDict",
    "LLMConfig", "LoraConfig", "QFormerOptions", "RunConfig", "SourceMap", "TrainConfig", "WhisperOptions", "YamlLoader", "build_config",
    "canonical_json", "coerce_setting", "coerce_value", "config_hash", "execution_dict", "experiment_dict",
    "flatten", "get_path", "is_execution", "legacy_hashes", "load_config", "manifest_digest", "parse_override",
    "read_yaml", "set_path", "setting_type", "show", "to_dict", "to_yaml", "yaml_load",
]
