"""Bad-input reporting: errors that name the row and field, and counted skips."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input data; the message names the source, row and field."""


@dataclass
class SkipReport:
    """Rows left out of a dataset, by reason; printed and logged, never silent."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no rows skipped"
        parts = [f"{count} {reason} (first: {self.examples[reason]})" for reason, count in sorted(self.counts.items())]
        return f"skipped {self.total} rows: " + "; ".join(parts)
