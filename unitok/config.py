"""Strict dataclass configs: defaults <- file/YAML <- dot-list overrides, unknown keys are errors.

Built on omegaconf structured configs; errors name the offending key, suggest the closest valid one and
say which config it belongs to.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be built: unknown key, wrong type or value."""


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_keys(cls, data: Mapping[str, Any], where: str = "", ignore: Iterable[str] = ()) -> None:
    """Raise :class:`ConfigError` for keys of ``data`` that ``cls`` (a dataclass) does not have, recursively."""
    names = _field_names(cls)
    ignore = set(ignore)
    unknown = [k for k in data if k not in names and k not in ignore]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), names, n=1)
            hints.append(f"{where}{k!s}" + (f" (did you mean {where}{close[0]}?)" if close else ""))
        raise ConfigError(
            f"unknown config key(s) for {cls.__name__}: {', '.join(hints)}. Valid keys: {', '.join(names)}"
        )
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    hints = _resolved_hints(cls)
    for k, v in data.items():
        sub = hints.get(k, types.get(k))
        if isinstance(v, Mapping) and dataclasses.is_dataclass(sub):
            check_keys(sub, v, where=f"{where}{k}.")


def _resolved_hints(cls) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - forward references that cannot be resolved
        return {}


def build_config(cls: type[T], *sources: Mapping[str, Any] | None, ignore: Iterable[str] = ()) -> T:
    """Instantiate dataclass ``cls`` from its defaults merged with ``sources`` (later wins), strictly.

    Args:
        cls: a dataclass type.
        sources: mappings (nested for nested dataclasses), or None to skip.
        ignore: top-level keys to drop silently (e.g. metadata written by other tools).

    Raises:
        ConfigError: unknown keys (with a did-you-mean hint), wrong types or invalid values.
    """
    ignore = set(ignore)
    merged = [OmegaConf.structured(cls)]
    for src in sources:
        if src is None:
            continue
        src = {k: v for k, v in dict(src).items() if k not in ignore}
        check_keys(cls, src)
        merged.append(OmegaConf.create(src))
    try:
        return OmegaConf.to_object(OmegaConf.merge(*merged))
    except ConfigKeyError as e:  # pragma: no cover - check_keys catches these first
        raise ConfigError(f"{cls.__name__}: {e.msg if hasattr(e, 'msg') else e}") from None
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        msg = (getattr(e, "msg", None) or str(e)).splitlines()[0]
        key = getattr(e, "full_key", None)
        raise ConfigError(f"invalid {cls.__name__} value{f' for {key!r}' if key else ''}: {msg}") from None


def parse_dotlist(items: Iterable[str]) -> dict[str, Any]:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'} (YAML-typed values)."""
    items = list(items)
    for it in items:
        if "=" not in it:
            raise ConfigError(f"override {it!r} must look like key=value (e.g. encoder.depth=4)")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config -> plain nested dict (JSON/YAML-ready)."""
    return dataclasses.asdict(cfg)
