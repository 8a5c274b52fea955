"""Training's errors, part of Ingle's one hierarchy (engine.errors)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import IngleError


@dataclass(frozen=True)
class DatasetProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class DatasetError(IngleError):
    """The dataset cannot be used as it is; `problems` lists every bad line with its number and reason."""

    def __init__(self, message: str, problems: tuple[DatasetProblem, ...] = ()):
        super().__init__(message)
        self.problems = tuple(problems)

    def __reduce__(self):
        return (DatasetError, (str(self), self.problems))


class TrainingError(IngleError):
    """Training cannot start or failed (unsupported architecture, missing extra, bad checkpoint)."""


class ExportError(IngleError):
    """An export could not be written (unsupported quant type, disk full, adapter does not fit the base)."""
