"""Webdataset tar shards: shard lists, streamed member groups, and a shuffle buffer whose state can be saved.

Nothing here decodes: a *group* is one sample's members (``{ext: bytes}``) as written by img2dataset
(``<key>.jpg`` + ``<key>.txt`` + ``<key>.json`` ...). Groups are numbered in file order, so a position in a
shard list is a group index, and resuming needs no decoding of what came before.
"""

from __future__ import annotations

import glob
import os
import random
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

# Errors a damaged, truncated or unreadable tar shard raises while being streamed.
SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)

Group = tuple[str, dict[str, bytes], str | None]  # (key, {ext: data}, damage: None | "truncated" | "lost")

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` -> three names (zero padding kept), ``{x,y}`` -> two.

    Several groups expand as a product, left to right; a group that is neither a range nor a comma list is kept.
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = _RANGE.match(body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
    return [head + opt + rest for opt in options for rest in expand_braces(tail)]


def resolve_shards(shards: str | os.PathLike | Sequence[str | os.PathLike], check_exists: bool = True) -> list[str]:
    """Shard paths from a list, a glob, brace notation, a directory (its ``*.tar``), or several joined by ``::``.

    Raises:
        ValueError: when nothing matches.
        FileNotFoundError: for named shards that do not exist (with ``check_exists``).
    """
    items = [shards] if isinstance(shards, str | os.PathLike) else list(shards)
    paths: list[str] = []
    for item in items:
        for part in str(os.fspath(item)).split("::"):
            for name in expand_braces(part):
                if os.path.isdir(name):
                    matched = sorted(glob.glob(os.path.join(glob.escape(name), "*.tar")))
                    if not matched:
                        raise ValueError(f"shard directory {name!r} holds no .tar file")
                    paths.extend(matched)
                elif glob.has_magic(name):
                    matched = sorted(glob.glob(name))
                    if not matched:
                        raise ValueError(f"shard pattern {name!r} matches no file")
                    paths.extend(matched)
                else:
                    paths.append(name)
    if not paths:
        raise ValueError(f"no shards given ({shards!r})")
    if check_exists:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} shards do not exist, e.g. {missing[:3]}")
    return paths


def _split_member_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``): the key ends at the first dot of the base name."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


class _BrokenMember(Exception):
    """A member whose data could not be read; carries the key so its sample is counted as truncated."""

    def __init__(self, key: str, cause: BaseException):
        super().__init__(str(cause))
        self.key = key


def _read_members(path: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, data) of every regular member, streamed. Raises ``_BrokenMember`` or a ``SHARD_ERRORS``."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_member_name(member.name)
            try:
                data = tar.extractfile(member).read()
            except SHARD_ERRORS as e:
                raise _BrokenMember(key, e) from e
            yield key, ext, data


def read_groups(url: str, report: dict[str, Any]) -> Iterator[Group]:
    """Every sample group of one shard in file order, valid or not; never raises for a damaged shard.

    ``damage`` is "truncated" for the last group of a shard that ends early (it may have lost members) and
    "lost" for a group whose member could not be read (its members are dropped). A read error ends the shard and
    is stored in ``report["error"]``. The same file always gives the same groups.
    """
    key, group, error, broken = None, {}, None, None
    members = _read_members(url)
    while True:
        try:
            member_key, ext, data = next(members)
        except StopIteration:
            break
        except _BrokenMember as e:  # the member being read was cut off: its sample is lost
            error, broken = e, e.key
            break
        except SHARD_ERRORS as e:  # unreadable shard, or truncation between two members
            error = e
            break
        if member_key != key:
            if group:
                yield key, group, None
            key, group = member_key, {}
        group[ext] = data
    report["error"] = error
    if broken is not None:
        if broken != key and group:
            yield key, group, None
        yield broken, {}, "lost"
    elif group:
        yield key, group, "truncated" if error is not None else None


class ShuffleBuffer:
    """Buffer shuffle (webdataset style) whose state can be saved after any output and restored.

    Fills up to ``size`` items, then every new item takes the place of a random one, which is output; at the end
    the rest comes out in a random order (:meth:`drain`). ``size`` <= 1 passes items straight through. The state
    is ``items`` (their order matters), ``draining`` and the RNG state.
    """

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.items: list[Any] = []
        self.draining = False

    def push(self, item: Any) -> Any | None:
        """Add an item; returns the item that leaves the buffer, or None while it fills."""
        if self.size <= 1:
            return item
        if len(self.items) < self.size:
            self.items.append(item)
            return None
        i = self.rng.randrange(self.size)
        out, self.items[i] = self.items[i], item
        return out

    def drain(self) -> Iterator[Any]:
        """The remaining items in a random order (resumable: ``items`` is the rest, in reverse output order)."""
        if not self.draining:
            self.rng.shuffle(self.items)
            self.items.reverse()
            self.draining = True
        while self.items:
            yield self.items.pop()
