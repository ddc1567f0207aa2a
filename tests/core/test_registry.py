"""``Registry``: names written once, duplicates refused, unknown names listing the known ones."""

from __future__ import annotations

import pytest

from adaptome.core.adapters import ADAPTERS
from adaptome.core.registry import Registry, RegistryError


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("small")
    class Small:
        pass

    assert reg.get("small") is Small
    assert reg.names() == ["small"] and "small" in reg and len(reg) == 1 and list(reg) == ["small"]


def test_duplicate_name_is_an_error_and_keeps_the_first():
    reg = Registry("widget")

    @reg.register("a")
    class First:
        pass

    with pytest.raises(RegistryError, match="widget 'a' is already registered"):
        @reg.register("a")
        class Second:
            pass

    assert reg.get("a") is First


def test_unknown_name_lists_known_names():
    reg = Registry("widget")
    for name in ("beta", "alpha"):
        reg.register(name)(object())
    with pytest.raises(RegistryError) as e:
        reg.get("gamma")
    assert str(e.value) == "unknown widget 'gamma'; known: alpha, beta"
    assert isinstance(e.value, KeyError)  # callers may catch KeyError
    with pytest.raises(RegistryError, match=r"known: \(none\)"):
        Registry("empty").get("x")


@pytest.mark.parametrize("bad", ["", " lora", "lora "])
def test_invalid_names(bad):
    with pytest.raises(RegistryError, match="invalid name"):
        Registry("widget").register(bad)


def test_loader_runs_once_on_first_lookup_not_at_construction():
    calls = []
    reg: Registry = Registry("widget", loader=lambda: (calls.append(1), reg.register("late")(object())))
    assert calls == []
    assert "late" in reg
    assert reg.names() == ["late"]
    reg.get("late")
    assert calls == [1]


def test_adapter_registry_holds_the_core_methods():
    names = ADAPTERS.names()
    for name in ("lora", "dora", "lora_native"):
        assert name in names
    for name in names:
        cls = ADAPTERS.get(name)
        assert cls.method == name, f"{cls.__name__}.method is {cls.method!r}, registered as {name!r}"
        assert cls.backend in ("native", "peft")
        assert cls.param_formula and cls.trains and cls.paper, f"{name}: describe the method for `adapters list`"
        assert cls.examples(), f"{name}: no example configs for the contract tests"
