"""A progress reporter for tests: it keeps every step it hears of (`modalfuse.progress`)."""

from __future__ import annotations


class Recorder:
    """A reporter that keeps every step it hears of."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, int, int | None, float | None]] = []

    def on_step(self, kind: str, name: str, done: int, total: int | None,
                eta_s: float | None = None) -> None:
        """Keep the step."""
        self.steps.append((kind, name, done, total, eta_s))

    def of(self, kind: str) -> list[tuple[str, int, int | None, float | None]]:
        """The steps of one kind: (name, done, total, eta_s)."""
        return [(n, d, t, e) for k, n, d, t, e in self.steps if k == kind]

    def rounds(self, kind: str) -> list[list[tuple[str, int, int | None]]]:
        """The steps of `kind` cut into rounds, each starting where the count goes back."""
        out: list[list[tuple[str, int, int | None]]] = []
        for name, done, total, _ in self.of(kind):
            if not out or done < out[-1][-1][1] or total != out[-1][-1][2]:
                out.append([])
            out[-1].append((name, done, total))
        return out
