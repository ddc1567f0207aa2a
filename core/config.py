"""Strict YAML <-> dataclass configs.

A config is a dataclass of plain values (str, int, float, bool, None, lists, dicts, nested
dataclasses, ``Literal`` choices). ``load_config(Cls, path, overrides)`` reads YAML, applies
``--set a.b=value`` overrides (the value is parsed as YAML, so ``--set train.lr=1e-4`` gives a
float) and checks every key and type: an unknown key or a wrong type is a ``ConfigError`` naming
the dotted key and the file. ``save_config`` writes the resolved config (``config.yaml``) beside a
run's outputs. YAML never holds import paths: what a name means is decided by a registry.

Not covered: environment-variable interpolation, config inheritance between files, unions of
dataclasses.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from adaptome.core.atomic import write_text_atomic
from adaptome.core.errors import AdaptomeError

C = TypeVar("C")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's YAML 1.1 rules need a
    dot, ``1.0e-4``, and would hand a learning rate over as the string ``"1e-4"``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(AdaptomeError, ValueError):
    """A config value or key is wrong; the message names the file and the dotted key."""


class InvalidValue(ConfigError):
    """A value of the right type that cannot work (``lr: inf``, ``block_size: 0``), raised by a config's
    ``__post_init__``; ``from_dict`` prefixes the section, so the message names the dotted key."""

    def __init__(self, key: str, problem: str, source: str | os.PathLike | None = None):
        super().__init__(f"{_where(source)}{key}: {problem}")
        self.key, self.problem = key, problem


def _where(source: str | os.PathLike | None) -> str:
    return f"{source}: " if source else ""


def _check(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key, source)
            except ConfigError:
                pass  # try the next member; the error below names the whole union
        raise ConfigError(f"{_where(source)}{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{_where(source)}{key}: {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source)}{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(source)}{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{_where(source)}{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_check(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source)}{key}: expected a mapping, got {value!r}")
        kt, vt = (get_args(tp) or (Any, Any))
        return {_check(k, kt, f"{key}.{k}", source): _check(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(source)}{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(source)}{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source)}{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(source)}{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{_where(source)}{key}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_of(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _overlay(default: Any, value: dict) -> dict:
    """The init fields of the dataclass instance ``default`` with ``value``'s keys laid over them (recursively).

    So a partial section (``train: {max_steps: 3}`` or ``--set train.max_steps=3``) keeps the enclosing
    config's defaults for that section (e.g. a stage's own output folder and learning rate) instead of
    falling back to the section class's generic defaults. Unknown keys pass through and are refused by
    ``from_dict``."""
    out = {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}
    for k, v in value.items():
        cur = out.get(k)
        out[k] = _overlay(cur, v) if isinstance(v, dict) and _is_instance(cur) else v
    return out


def from_dict(cls: type[C], data: dict, source: str | os.PathLike | None = None, prefix: str = "") -> C:
    """Build ``cls`` from a mapping, strictly: unknown keys and wrong types raise ConfigError.

    A nested section given as a mapping starts from the field's own default (see ``_overlay``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source)}{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        known = ", ".join(fields)
        raise ConfigError(f"{_where(source)}unknown key {key!r} (known: {known})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            default = _default_of(fields[name])
            if _is_instance(default):
                value = _overlay(default, value)
        kwargs[name] = _check(value, hints[name], key, str(source) if source else None)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{_where(source)}{prefix or cls.__name__}: {e}") from None
    except InvalidValue as e:  # __post_init__ validation of one field
        key = f"{prefix}.{e.key}" if prefix else e.key
        raise InvalidValue(key, e.problem, source) from None
    except ValueError as e:  # __post_init__ validation
        raise ConfigError(f"{_where(source)}{prefix or cls.__name__}: {e}") from None
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def apply_overrides(data: dict, overrides: typing.Iterable[str], source: str = "--set") -> dict:
    """Apply ``a.b=value`` strings to a nested dict; the value is parsed as YAML."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: cannot parse value of {path!r}: {e}") from None
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            child = dict(child) if isinstance(child, dict) else {}
            node[k] = child
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a syntax error or a non-mapping is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = ()) -> C:
    """Load ``cls`` from YAML (optional) plus ``--set`` overrides, strictly checked. An error names the file, or
    the ``--set`` item at fault (``_blame_overrides``)."""
    overrides = list(overrides)
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data, source=path or "--set")
    except ConfigError as e:
        if path and overrides:
            _blame_overrides(cls, path, overrides, e)
        raise


def _blame_overrides(cls: type, path: str | os.PathLike, overrides: list[str], err: ConfigError) -> None:
    """Make ``err`` (raised naming ``path``) name the ``--set`` item at fault, ``--set <item> (over <path>): ...``,
    when that item alone, over the defaults, fails with the same message: the unknown key or bad value came from
    the command line, not from the file (a user looking for ``train.lrr`` in the file would not find it)."""
    prefix = _where(path)
    message = str(err)
    if not message.startswith(prefix):
        return
    for item in overrides:
        try:
            from_dict(cls, apply_overrides({}, [item]), source=path)
        except ConfigError as alone:
            if str(alone) == message:
                err.args = (f"--set {item} (over {path}): {message[len(prefix):]}",)
                return


def save_config(cfg: Any, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a run's outputs (atomically) and return its path."""
    return write_text_atomic(Path(out_dir) / name, yaml.safe_dump(to_dict(cfg), sort_keys=False))
