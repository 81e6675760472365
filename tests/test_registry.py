"""Registry: one name -> one object, duplicates refused, unknown names explained."""
from __future__ import annotations

import pytest

from harness.models.projectors import PROJECTORS, LinearProjector
from harness.models.encoders import ENCODERS
from harness.registry import Registry, RegistryError


def _registry() -> Registry:
    reg: Registry = Registry("projector")
    for name in ("linear", "conv1d", "qformer"):
        reg.add(name, object())
    return reg


def test_register_and_get() -> None:
    reg: Registry = Registry("thing")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert "alpha" in reg and "beta" not in reg
    assert len(reg) == 1 and reg.names() == ["alpha"] and list(reg) == ["alpha"]


def test_duplicate_registration_is_rejected_and_keeps_the_first() -> None:
    reg = _registry()
    first = reg.get("linear")
    with pytest.raises(RegistryError, match=r"projector 'linear' is already registered"):
        reg.add("linear", object())
    with pytest.raises(RegistryError):

        @reg.register("linear")
        class Other:
            pass

    assert reg.get("linear") is first
    assert len(reg) == 3


def test_unknown_name_lists_valid_names_and_suggests_closest() -> None:
    reg = _registry()
    with pytest.raises(RegistryError) as e:
        reg.get("linaer")
    msg = str(e.value)
    assert "unknown projector 'linaer'" in msg
    assert "did you mean 'linear'?" in msg
    assert "Valid projector names: conv1d, linear, qformer" in msg
    # A KeyError subclass whose message is not wrapped in quotes.
    assert isinstance(e.value, KeyError) and not msg.startswith("'")


def test_unknown_name_far_from_everything_has_no_suggestion() -> None:
    with pytest.raises(RegistryError) as e:
        _registry().get("zzz")
    assert "did you mean" not in str(e.value)
    assert "conv1d, linear, qformer" in str(e.value)


def test_empty_registry_says_so() -> None:
    with pytest.raises(RegistryError, match=r"\(none registered\)"):
        Registry("projector").get("linear")


def test_real_registries() -> None:
    assert PROJECTORS.names() == ["conv1d", "linear", "qformer"]
    assert ENCODERS.names() == ["hubert", "wav2vec2", "wavlm", "whisper"]
    with pytest.raises(RegistryError, match="already registered"):
        PROJECTORS.add("linear", object())
    assert PROJECTORS.get("linear") is LinearProjector
    with pytest.raises(RegistryError, match="did you mean 'conv1d'"):
        PROJECTORS.get("conv1")
