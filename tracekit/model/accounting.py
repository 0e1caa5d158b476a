"""Walk accounting: what a page-table walker did, per level.

:class:`WalkStats` counts, for one operation, per KVM level (arm64 -1..3, x86 5..1): entries
iterated, callbacks by visit kind (LEAF, TABLE_PRE, TABLE_POST), early returns, visits in subtrees
the same walk created, splits, ENOMEM failures and the entries of separate subtree-building walks;
and per operation the walks, tables taken from the memory cache, cache top-ups, iterator restarts,
stopped walks and levels skipped. :meth:`WalkStats.as_dict` is the stable JSON form; each counter
is defined in docs/model.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LEVEL_FIELDS", "WalkStats"]

#: Per-level counters, in JSON order.
LEVEL_FIELDS = ("entries", "leaf", "table_pre", "table_post", "early", "fresh", "splits", "enomem", "build")
_OFFSET = 1  # list slot = level + 1, so arm64 level -1 is slot 0; x86 levels 1..5 fit slots 2..6
_SLOTS = 7


def _zeros() -> list[int]:
    return [0] * _SLOTS


@dataclass
class WalkStats:
    """Counters of one operation; see the module docstring for every field."""

    entries: list[int] = field(default_factory=_zeros)
    leaf: list[int] = field(default_factory=_zeros)
    table_pre: list[int] = field(default_factory=_zeros)
    table_post: list[int] = field(default_factory=_zeros)
    early: list[int] = field(default_factory=_zeros)
    fresh: list[int] = field(default_factory=_zeros)
    splits: list[int] = field(default_factory=_zeros)
    enomem: list[int] = field(default_factory=_zeros)
    build: list[int] = field(default_factory=_zeros)
    walks: int = 0
    tables: int = 0
    topups: int = 0
    restarts: int = 0
    stopped: bool = False
    skipped_levels: set[int] = field(default_factory=set)

    @staticmethod
    def slot(level: int) -> int:
        return level + _OFFSET

    def get(self, name: str, level: int) -> int:
        return getattr(self, name)[level + _OFFSET]

    def add(self, name: str, level: int, n: int = 1) -> None:
        getattr(self, name)[level + _OFFSET] += n

    def callbacks(self, level: int) -> int:
        s = level + _OFFSET
        return self.leaf[s] + self.table_pre[s] + self.table_post[s]

    def total(self, name: str) -> int:
        if name == "callbacks":
            return sum(self.leaf) + sum(self.table_pre) + sum(self.table_post)
        return sum(getattr(self, name))

    def merge(self, other: "WalkStats", times: int = 1) -> "WalkStats":
        """Add ``times`` copies of ``other`` into self (returns self)."""
        for name in LEVEL_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            for i in range(_SLOTS):
                mine[i] += theirs[i] * times
        self.walks += other.walks * times
        self.tables += other.tables * times
        self.topups += other.topups * times
        self.restarts += other.restarts * times
        self.stopped = self.stopped or (other.stopped and times > 0)
        if times:
            self.skipped_levels |= other.skipped_levels
        return self

    def copy(self) -> "WalkStats":
        return WalkStats().merge(self)

    def comparable(self) -> tuple:
        """Everything counted, as one tuple (for exact equality checks)."""
        return (
            tuple(tuple(getattr(self, n)) for n in LEVEL_FIELDS),
            self.walks,
            self.tables,
            self.topups,
            self.restarts,
            self.stopped,
            tuple(sorted(self.skipped_levels)),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WalkStats) and self.comparable() == other.comparable()

    def as_dict(self, levels: list[int]) -> dict:
        """Stable JSON form; ``levels`` in walk order (root first)."""
        return {
            "walks": self.walks,
            "entries": self.total("entries"),
            "callbacks": self.total("callbacks"),
            "tables_allocated": self.tables,
            "cache_topups": self.topups,
            "iterator_restarts": self.restarts,
            "stopped_on_error": self.stopped,
            "skipped_levels": sorted(self.skipped_levels),
            "levels": [
                {"level": level, "callbacks": self.callbacks(level), **{n: self.get(n, level) for n in LEVEL_FIELDS}}
                for level in levels
            ],
        }
