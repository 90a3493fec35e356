"""Build frozen dataclasses from parsed YAML, naming the path of every bad key or value."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from canvoy.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], data: object, path: str = "") -> T:
    """Make ``cls`` (a dataclass) from ``data`` (a mapping), converting nested values.

    Raises:
        ConfigError: an unknown key, a missing required key, or a value of the wrong type or
            rejected by the dataclass's own checks; the message starts with the key's path.
    """
    where = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(path, str(key))}: unknown key (known keys: {known})")
    values = {}
    for name, spec in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], _join(path, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    try:
        return cls(**values)
    except ConfigError as exc:
        if exc.key is not None:  # a field's own check: name the field's whole path
            raise ConfigError(f"{_join(path, exc.key)}: {exc.problem}") from exc
        raise ConfigError(f"{where}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def read_yaml(path: Path, what: str) -> object:
    """Parse the YAML file ``path`` (a ``what``, e.g. "agent config", for messages).

    Raises:
        ConfigError: the file cannot be read, is not YAML, or gives a key twice in one
            mapping (YAML would keep the last silently: a ``metrics:`` line added at the end
            of a file that has a ``metrics:`` section).
    """
    import yaml

    try:
        return yaml.load(path.read_text(), Loader=_unique_keys_loader())  # a SafeLoader
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    """A PyYAML error as one line: where, then what (its own text spans several lines)."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def _unique_keys_loader() -> type:
    """PyYAML's SafeLoader, refusing a mapping that gives one key twice."""
    import yaml

    class UniqueKeysLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            first: dict[object, yaml.Mark] = {}
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) and key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (first on line {first[key].line + 1}): "
                        "keep one",
                        key_node.start_mark,
                    )
                first.setdefault(key, key_node.start_mark)
            return super().construct_mapping(node, deep)

    return UniqueKeysLoader


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def convert(hint: Any, value: object, path: str) -> Any:
    """Convert one YAML value to ``hint``'s type or raise ConfigError naming ``path``."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: {value!r} fits no allowed type")
    if origin is typing.Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        item = get_args(hint)[0]
        return tuple(convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        key_t, val_t = get_args(hint)
        return {
            convert(key_t, k, f"{path}.{k}"): convert(val_t, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)  # type: ignore[arg-type]
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: object, path: str) -> Any:
    if hint is Any or hint is object:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a file path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported type {hint!r}")
