"""Typed config loading: dataclasses from YAML, flags and ``--set``, with errors naming the field.

Every config in raysae is a (frozen) dataclass; the same objects are the Python API.
`from_dict` builds one from plain data, recursing into nested dataclasses, checking types
and rejecting unknown keys with the dotted path of the bad field (``train.lr: expected a
number, got 'fast'``). `load_config` is the one loader every CLI uses: the YAML file, then
the command's flags, then ``--set a.b=value`` overrides, in that order.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field (and the file when known)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of "
                          + ", ".join(_type_name(a) for a in args))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if origin is tuple and value is not None and not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads "7e-5" as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from plain data (parsed YAML, flags).

    Args:
        cls: the config dataclass (nested dataclasses are built recursively).
        data: a mapping of field names to values.
        where: the dotted path of `data` in a larger config, for error messages.
    Returns:
        The validated config.
    Raises:
        ConfigError naming the dotted field for unknown keys, bad types and bad values.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where and not str(e).startswith(where) else str(e)) from None
    except TypeError as e:  # missing required field
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError naming `field` unless `condition` holds (for __post_init__ checks)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (instead of last-wins)."""


def _unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> plain data; bad YAML and duplicate keys raise ConfigError naming `where`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def set_path(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for dotted = "a.b.c" (creating mappings on the way)."""
    parts = dotted.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a mapping")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested plain dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        set_path(data, key, parse_yaml(raw, f"--set {key.strip()}"))
    return data


def read_yaml(url: str) -> dict:
    """The mapping in a YAML file at any fsspec URL; errors name the file."""
    from raysae import storage

    try:
        with storage.open_url(url, "r") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{url}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{url}: cannot read ({type(e).__name__}: {e})") from None
    data = parse_yaml(text, url)
    if data is None:
        raise ConfigError(f"{url}: the file is empty")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{url}: expected a mapping of fields, got {type(data).__name__}")
    return dict(data)


def load_config(cls: type[T], url: str | None = None, flags: Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> T:
    """A config from a YAML file, then flags, then ``--set`` overrides (later wins).

    Args:
        cls: the config dataclass.
        url: a YAML file (any fsspec URL), or None to start from the defaults.
        flags: dotted field -> value from a command's flags (None values are skipped).
        overrides: ``field=value`` strings, values parsed as YAML.
    Raises:
        ConfigError naming the file and the dotted field.
    """
    data = read_yaml(url) if url else {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_path(data, dotted, value)
    apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{url}: {e}" if url else str(e)) from None


def load_yaml(cls: type[T], url: str, overrides: Sequence[str] | None = None) -> T:
    """`load_config` from a file and ``--set`` overrides only."""
    return load_config(cls, url, overrides=overrides or ())


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field of a config dataclass (what ``--set`` accepts)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += field_paths(tp, name + ".")
        else:
            out.append(name)
    return out


def set_help(cls: type) -> str:
    """An argparse epilog listing the fields ``--set`` accepts."""
    import textwrap

    return "fields for --set (values parsed as YAML):\n" + textwrap.fill(
        ", ".join(field_paths(cls)), width=88, initial_indent="  ", subsequent_indent="  ")
