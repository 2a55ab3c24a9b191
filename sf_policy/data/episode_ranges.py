"""Episode (and seed) lists as people write them: "1,3-5" in, "0-4, 7, 9-10" out."""

from __future__ import annotations

from collections.abc import Iterable

from .features import DatasetError


def parse_episodes(spec: str, option: str = "--episodes") -> list[int]:
    """'1,3-5' -> [1, 3, 4, 5] (sorted, unique); a bad part is named with ``option``."""
    chosen: set[int] = set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        try:
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if first < 0 or last < first:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{option}: {part!r} is not an episode number or a range like 3-5") from None
        chosen.update(range(first, last + 1))
    if not chosen:
        raise DatasetError(f"{option}: no episodes given")
    return sorted(chosen)


def format_episodes(numbers: Iterable[int], dash: str = "-") -> str:
    """[0, 1, 2, 3, 4, 7, 9, 10] -> "0-4, 7, 9-10": short for long datasets."""
    ordered = sorted(set(numbers))
    parts, start = [], None
    for i, n in enumerate(ordered):
        start = n if start is None else start
        if i + 1 == len(ordered) or ordered[i + 1] != n + 1:
            parts.append(str(n) if n == start else f"{start}{dash}{n}")
            start = None
    return ", ".join(parts)
