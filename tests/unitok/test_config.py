from dataclasses import dataclass, field

import pytest

from unitok.config import ConfigError, build_config, parse_dotlist


@dataclass
class Inner:
    depth: int = 2
    rate: float | None = None


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_defaults_then_sources_then_overrides():
    cfg = build_config(Outer, {"inner": {"depth": 4}}, parse_dotlist(["inner.rate=0.5", "name=y"]))
    assert cfg == Outer(name="y", inner=Inner(depth=4, rate=0.5))


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"inner\.dpeth \(did you mean inner\.depth\?\)"):
        build_config(Outer, {"inner": {"dpeth": 3}})
    with pytest.raises(ConfigError, match="nmae"):
        build_config(Outer, {"nmae": "z"})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="depth"):
        build_config(Outer, {"inner": {"depth": "deep"}})
    with pytest.raises(ConfigError, match="key=value"):
        parse_dotlist(["inner.depth"])


def test_ignored_metadata_keys():
    assert build_config(Outer, {"name": "a", "transformers_version": "5"}, ignore={"transformers_version"}).name == "a"
