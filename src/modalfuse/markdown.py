"""Markdown tables, written one way: every generated page (reports, benchmarks, model cards,
the ablation) lays its tables out through `markdown_table`.

Cells are written as given (`str` of each value): formatting numbers is the caller's job,
so a table shows exactly what its page means to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

Align = Literal["left", "right", "center"] | None
# The separator cell of each alignment; None leaves it to the renderer (left, in practice).
SEPARATORS: dict[Align, str] = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


def markdown_table(headers: Sequence[object], rows: Iterable[Sequence[object]],
                   align: Sequence[Align] | None = None) -> str:
    """A pipe table: the header row, the separator row (`align` per column, default none) and
    one line per row, joined by newlines (no newline at the end)."""
    aligns = list(align) if align is not None else [None] * len(headers)
    if len(aligns) != len(headers):
        raise ValueError(f"align has {len(aligns)} entries for {len(headers)} columns")
    lines = [_row(headers), _row(SEPARATORS[a] for a in aligns)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
