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
    assert ENCODERS.names() == ["hubert", "moonshine", "wav2vec2", "wavlm", "whisper"]
    with pytest.raises(RegistryError, match="already registered"):
        PROJECTORS.add("linear", object())
    assert PROJECTORS.get("linear") is LinearProjector
    with pytest.raises(RegistryError, match="did you mean 'conv1d'"):
        PROJECTORS.get("conv1")


def test_a_registry_with_a_base_type_refuses_anything_else() -> None:
    from harness.registry import Registry

    class Base: ...

    class Child(Base): ...

    classes, values = Registry("thing", Base), Registry("value", Base)
    classes.add("child", Child)
    values.add("one", Child())
    with pytest.raises(TypeError, match="thing 'str': expected a Base"):
        classes.add("str", str)
    with pytest.raises(TypeError, match="value 'two': expected a Base"):
        values.add("two", 2)
    assert classes.names() == ["child"] and values.names() == ["one"]  # nothing half-added


def test_replaced_swaps_an_entry_for_a_block_and_always_restores_it() -> None:
    from harness.registry import Registry

    reg = Registry("thing", int)
    reg.add("a", 1)
    with reg.replaced("a", 2):
        assert reg["a"] == 2
    assert reg["a"] == 1
    with pytest.raises(RuntimeError), reg.replaced("a", 3):
        raise RuntimeError("boom")
    assert reg["a"] == 1
    with pytest.raises(TypeError):
        with reg.replaced("a", "not an int"):
            pass
    assert reg["a"] == 1
