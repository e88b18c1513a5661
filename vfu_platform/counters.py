# SPDX-License-Identifier: BSD-3-Clause
"""Event counters: the one counters object the server, the bridge and backends expose.

A shared leaf (imports nothing from the package).  Counters are for tests and
`-v` output; they never change behaviour.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counters:
    """Named event counts; `values` is the plain dict behind them."""

    values: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, by: int = 1) -> None:
        """Add `by` (default 1) to counter `name`, starting from 0."""
        self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str, default: int = 0) -> int:
        return self.values.get(name, default)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def keys(self) -> list[str]:
        return list(self.values)

    def items(self) -> list[tuple[str, int]]:
        return list(self.values.items())

    def snapshot(self) -> dict[str, int]:
        """A copy of the current values."""
        return dict(self.values)


__all__ = ["Counters"]
