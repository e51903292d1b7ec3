"""One consumer's resumable reading of webdataset shards (:class:`ShardStream`); re-mapping to another consumer count.

A consumer reads a sequence of *pieces* through a shuffle buffer. A piece is ``[epoch, shard, start, keep]``: the sample
groups ``start, start + 1, ...`` of shard ``shard`` (an index into the data set's shard list) and the groups ``keep``
(all < ``start``); a whole shard is ``[epoch, shard, 0, []]``. Groups are numbered across the pieces in reading order
(*group ids*), so a position is a few integers plus the ids held by the shuffle buffer (:class:`Cursor`), and resuming
re-reads no piece wholly consumed and decodes nothing consumed.

A stream goes through *phases*, named by the keys of its state (:meth:`ShardStream.state_dict`):

- ``{"epoch": e}``: the consumer's shards of epoch ``e`` (every ``num_consumers``-th of the epoch's shard order), then
  ``e + 1`` and so on; the buffer drains at the end of each epoch.
- ``{"plan": pieces, "then": e}``: the unfinished pieces another consumer count left (:func:`remap_positions`), then
  epochs from ``e``.
- ``{"resampled": restart}``: endless shards drawn with replacement from the whole list; draw ``k`` is a function of
  (seed, restart, consumer, k), so the position (the draw count) replays the same draws. The buffer never drains.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from unitok.modalities.image.shards import ShuffleBuffer, read_groups

if TYPE_CHECKING:
    from unitok.modalities.image.data import WebDatasetShards

logger = logging.getLogger(__name__)

Piece = list  # [epoch (the draw number when resampled), shard index, start, keep]
Pieces = Callable[[int], Piece | None]  # piece k of a sequence, None past its end


def epoch_pieces(order: Sequence[int], epoch: int, consumer: int, num_consumers: int) -> list[Piece]:
    """The whole shards that ``consumer`` reads in ``epoch``, given the epoch's shard order (indices)."""
    return [[epoch, shard, 0, []] for shard in order[consumer::num_consumers]]


def _listed(pieces: list[Piece]) -> Pieces:
    return lambda k: pieces[k] if k < len(pieces) else None


class Cursor:
    """Position in a sequence of pieces read through ``buffer``.

    ``next_id`` is the first group not yet read; ``buffer`` holds (group id, item) read but not yet output; the pieces
    before ``first`` (whose first group is ``first_id``) are wholly consumed; ``sizes`` are the group counts of the
    pieces read since, and ``last_piece`` is the piece of the last sample output.
    """

    def __init__(self, buffer: ShuffleBuffer):
        self.buffer = buffer
        self.first = self.first_id = self.next_id = self.last_piece = 0
        self.sizes: list[int] = []

    def trim(self, low: int | None = None) -> None:
        """Forget the pieces wholly before group ``low`` (default: the oldest group still needed)."""
        if low is None:
            low = min([self.next_id, *(item[0] for item in self.buffer.items if item is not None)])
        while self.sizes and self.first_id + self.sizes[0] <= low:
            self.first_id += self.sizes.pop(0)
            self.first += 1

    def position(self) -> dict[str, Any]:
        self.trim()
        return {"first": self.first, "first_id": self.first_id, "sizes": list(self.sizes), "next_id": self.next_id,
                "draining": self.buffer.draining, "buffer": [gid for gid, _ in self.buffer.items],
                "rng": self.buffer.rng.getstate()}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> dict[int, int]:
        """Go back to :meth:`position`'s output; returns {group id: buffer slot} of the groups to put back."""
        version, internal, gauss = state["rng"]
        self.buffer.rng.setstate((version, tuple(internal), gauss))
        self.buffer.draining = bool(state["draining"])
        self.buffer.items = [None] * len(state["buffer"])
        refill = {int(gid): slot for slot, gid in enumerate(state["buffer"])}
        self.next_id = int(state["next_id"])
        self.first, self.first_id = int(state.get("first", 0)), int(state.get("first_id", 0))  # older: from 0
        self.sizes = [int(s) for s in state["sizes"]]
        self.trim(min([*refill, self.next_id]))
        self.sizes, self.last_piece = [], self.first  # reading starts again at piece ``first``
        return refill


def read_pieces(ds: WebDatasetShards, pieces: Pieces, cursor: Cursor, resume: dict[str, Any] | None = None,
                drain: bool = True) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The samples of ``pieces`` through the cursor's buffer, from the start or from a saved position."""
    refill = cursor.restore(resume) if resume is not None else {}
    tally = ShardTally(ds.stats)
    for gid, item, wanted in _numbered_groups(ds.shards, pieces, cursor, tally):
        if gid < cursor.next_id or not wanted:  # resuming: refill the buffer, drop what was consumed (no decoding)
            slot = refill.pop(gid, None)
            if slot is None:
                tally.handled(item[0], False)
            else:
                cursor.buffer.items[slot] = (gid, item)
            cursor.next_id = max(cursor.next_id, gid + 1)
            continue
        cursor.next_id = gid + 1
        out = cursor.buffer.push((gid, item))
        if out is not None and (sample := ds.decode_group(out[1], tally)) is not None:
            cursor.last_piece = out[1][0]
            yield sample
    if refill:
        raise RuntimeError(f"shards changed since the position was saved: groups {sorted(refill)[:5]} not found")
    if drain:
        for out in cursor.buffer.drain():
            if (sample := ds.decode_group(out[1], tally)) is not None:
                yield sample


def _numbered_groups(urls: list[str], pieces: Pieces, cursor: Cursor,
                     tally: ShardTally) -> Iterator[tuple[int, tuple[int, str, Any], bool]]:  # fmt: skip
    """(group id, (piece index, url, group), wanted) from piece ``cursor.first`` on; records each piece's size."""
    k, gid = cursor.first, cursor.first_id
    while (piece := pieces(k)) is not None:
        _, shard, start, keep = piece
        keep, url, report, n = set(keep), urls[shard], {}, 0
        for group in read_groups(url, report):
            tally.read(k)
            yield gid, (k, url, group), n >= start or n in keep
            gid, n = gid + 1, n + 1
        cursor.sizes.append(n)
        cursor.trim()
        tally.read_done(k, url, report["error"])
        k += 1


class ShardStream:
    """One consumer's endless samples and its position, :meth:`state_dict` (phases: see the module docstring)."""

    def __init__(self, ds: WebDatasetShards, consumer: int, num_consumers: int, seed: int,
                 state: dict[str, Any] | None):  # fmt: skip
        self.ds, self.consumer, self.num_consumers, self.seed = ds, consumer, num_consumers, seed
        self.phase: dict[str, Any] = {}
        self.cursor: Cursor | None = None
        self._saved = state
        self._samples = self._run(state or {})

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._samples)

    def state_dict(self) -> dict[str, Any] | None:
        """The position after the last sample returned (what :meth:`WebDatasetShards.stream` takes back)."""
        if self.cursor is None:
            return self._saved
        position, phase = self.cursor.position(), dict(self.phase)
        if "plan" in phase:  # only the pieces still needed
            phase["plan"], position["first"] = phase["plan"][position["first"] :], 0
        return {**phase, **position, "num_shards": len(self.ds.shards)}

    def epoch(self, epoch: int, resume: dict[str, Any] | None = None) -> Generator[dict[str, Any], None, int]:
        """The consumer's samples of one epoch; returns how many."""
        order = self.ds.shard_indices(epoch, self.seed)
        pieces = epoch_pieces(order, epoch, self.consumer, self.num_consumers)
        return self._phase({"epoch": epoch}, _listed(pieces), str(epoch), resume)

    def _run(self, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        resume = state if "next_id" in state else None
        if self.ds.resampled:
            restart = int(state.get("resampled", 0))
            draws = lambda k: self._draw(restart, k)  # noqa: E731
            yield from self._phase({"resampled": restart}, draws, f"resampled{restart}", resume, drain=False)
        if "plan" in state:
            plan, then = [list(p) for p in state["plan"]], int(state["then"])
            yield from self._phase({"plan": plan, "then": then}, _listed(plan), f"plan{then}", resume)
            epoch, resume = then, None
        else:
            epoch = int(state.get("epoch", self.ds.epoch))
        while True:
            produced = yield from self.epoch(epoch, resume)
            if produced == 0 and resume is None:
                shards = self.ds.consumer_shards(epoch, self.consumer, self.num_consumers, self.seed)
                raise RuntimeError(f"data consumer {self.consumer}: no valid sample in its shards {shards} of epoch "
                                   f"{epoch} (the log says why)")  # fmt: skip
            epoch, resume = epoch + 1, None

    def _phase(self, phase: dict[str, Any], pieces: Pieces, key: str, resume: dict[str, Any] | None,
               drain: bool = True) -> Generator[dict[str, Any], None, int]:  # fmt: skip
        rng = random.Random(f"unitok-samples/{self.seed}/{key}/{self.consumer}")
        self.phase, self.cursor = phase, Cursor(ShuffleBuffer(self.ds.shuffle_buffer, rng))
        produced = 0
        for sample in read_pieces(self.ds, pieces, self.cursor, resume, drain):
            produced += 1
            yield sample
        return produced

    def _draw(self, restart: int, k: int) -> Piece:
        """Draw ``k`` of a resampled stream: a shard of the whole list, with replacement."""
        n = len(self.ds.shards)
        if k - self.cursor.last_piece > 20 * n + 100:  # ~ e^-20 to miss a single valid shard by chance
            raise RuntimeError(f"data consumer {self.consumer}: no valid sample in {k - self.cursor.last_piece} "
                               f"shards drawn from {n} (the log says why)")  # fmt: skip
        return [k, random.Random(f"unitok-resample/{self.seed}/{restart}/{self.consumer}/{k}").randrange(n), 0, []]


def remap_positions(ds: WebDatasetShards, states: dict[int, Any], old: int, new: int,
                    seed: int) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Positions of ``new`` consumers that go on from the saved positions of ``old`` consumers (``states``; missing or
    None: not started), e.g. after a change of world size or DataLoader workers.

    Epochs: everything the old consumers left unread of the epochs from the earliest to the latest one any of them is
    in (their unread shards, the unread rest of partly read shards, and the groups their shuffle buffers held, which
    go back to their shards) is dealt round-robin in shard order to the new consumers as a plan; then each goes on
    with the epochs after. Nothing of
    those epochs is lost or read twice; what cannot be kept is the order (fresh shuffle buffers, which start less
    mixed) and the per-sample augmentation randomness. Resampled: every new consumer draws afresh (a new restart).
    """
    for state in states.values():
        ds.check_position(state)
    if ds.resampled:
        restart = 1 + max((int(s.get("resampled", 0)) for s in states.values() if s), default=0)
        logger.warning(
            "resampled shards, %d data consumers now %d: each new consumer draws shards from a fresh RNG (restart %d); "
            "the old shuffle buffers and partly read shards are dropped", old, new, restart,
        )  # fmt: skip
        return {c: {"resampled": restart, "num_shards": len(ds.shards)} for c in range(new)}
    left, epochs, then = [], {}, None
    for c in range(old):
        state = states.get(c) or {}
        if "plan" in state:
            then = int(state["then"])
            left += remaining_pieces(state["plan"], state)
        else:
            epochs[c] = int(state.get("epoch", ds.epoch))
    planned = [] if then is None else [then]  # consumers still in a plan have read nothing of epoch ``then`` on
    lo, hi = min([*epochs.values(), *planned]), max([*epochs.values(), *(t - 1 for t in planned)])
    for e in range(lo, hi + 1):
        order = ds.shard_indices(e, seed)
        for c in range(old):
            at = epochs.get(c, lo - 1)  # the epoch consumer c is in: done before it, untouched after it
            if e >= at:
                pieces = epoch_pieces(order, e, c, old)
                left += remaining_pieces(pieces, states.get(c)) if e == at else pieces
    rank = {e: {s: i for i, s in enumerate(ds.shard_indices(e, seed))} for e in {p[0] for p in left}}
    left.sort(key=lambda p: (p[0], rank[p[0]][p[1]]))
    logger.warning(
        "data position of %d consumers re-mapped to %d: %d unfinished shards of epochs %d..%d (%d partly read, %d "
        "buffered samples put back) are dealt to the new consumers, then epochs go on from %d. No sample of these "
        "epochs is lost or repeated; the order differs from an uninterrupted run (fresh shuffle buffers) and "
        "augmentation randomness is new", old, new, len(left), lo, hi, sum(p[2] > 0 or bool(p[3]) for p in left),
        sum(len(p[3]) for p in left), hi + 1,
    )  # fmt: skip
    return {c: {"plan": left[c::new], "then": hi + 1, "num_shards": len(ds.shards)} for c in range(new)}


def remaining_pieces(pieces: list[Piece], state: dict[str, Any] | None) -> list[Piece]:
    """What of ``pieces`` (read from ``state``'s position; None: not started) is not consumed yet."""
    if not state or "next_id" not in state:
        return [list(p) for p in pieces]
    buffered = sorted(int(g) for g in state["buffer"])
    k, off, out = int(state.get("first", 0)), int(state.get("first_id", 0)), []
    for size in state["sizes"]:  # read to the end: only their buffered groups are left
        kept = [g - off for g in buffered if off <= g < off + size]
        if kept:
            out.append([*pieces[k][:2], size, kept])
        k, off = k + 1, off + size
    if k < len(pieces):  # being read (or not opened): its unread rest and buffered groups, then the untouched pieces
        epoch, shard, start, keep = pieces[k]
        upto = max(int(state["next_id"]) - off, 0)
        kept = sorted({j for j in keep if j >= upto} | {g - off for g in buffered if g >= off})
        out.append([epoch, shard, max(start, upto), kept])
        out += [list(p) for p in pieces[k + 1 :]]
    return out


class ShardTally:
    """Per-shard counts of one phase; logs a shard's line once all its groups are handled."""

    def __init__(self, stats: dict[str, int]):
        self.stats = stats
        self.open: dict[int, dict[str, Any]] = {}

    def _entry(self, k: int) -> dict[str, Any]:
        return self.open.setdefault(k, {"pending": 0, "dropped": 0, "done": False, **dict.fromkeys(self.stats, 0)})

    def read(self, k: int) -> None:
        self._entry(k)["pending"] += 1

    def handled(self, k: int, reason: str | None | bool) -> None:
        """One group of piece ``k`` is done: a sample (None), a skip (its reason) or dropped on resume (False)."""
        entry = self._entry(k)
        entry["pending"] -= 1
        if reason is None or reason is False:
            keys = ["samples"] if reason is None else ["dropped"]
        else:
            keys = ["skipped", f"skipped_{reason}"]
        for key in keys:
            entry[key] += 1
            if key in self.stats:
                self.stats[key] += 1
        self._maybe_log(k)

    def read_done(self, k: int, url: str, error: BaseException | None) -> None:
        entry = self._entry(k)
        entry.update(done=True, url=url, error=error)
        self.stats["shards"] += 1
        self.stats["shard_errors"] += int(error is not None)
        self._maybe_log(k)

    def _maybe_log(self, k: int) -> None:
        entry = self.open[k]
        if not entry["done"] or entry["pending"]:
            return
        del self.open[k]
        if entry["dropped"] and not entry["samples"] + entry["skipped"]:
            return  # consumed before the resumed position: already logged by the earlier run
        reasons = ", ".join(f"{n[8:]} {v}" for n, v in entry.items() if n.startswith("skipped_") and v)
        msg = f"shard {entry['url']}: {entry['samples']} samples, {entry['skipped']} skipped"
        msg += f" ({reasons})" if reasons else ""
        if entry["error"] is not None:
            logger.warning("%s; shard unreadable or truncated: %s", msg, entry["error"])
        else:
            logger.log(logging.WARNING if entry["skipped"] else logging.INFO, msg)
