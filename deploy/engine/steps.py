"""Plans as data: an operation is an ordered list of named steps; a dry run prints the same list
the run walks, so what an operator reads is what runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Printer = Callable[[str], None]
Observer = Callable[[str], None]

# Called with a step's name just before it runs. Nothing in the engine registers one: it is the
# seam the fault-injection tests use (from their own entry point), so no variable, file or flag of
# a production run can make a deploy stop at a step.
_observers: list[Observer] = []


def observe(fn: Observer) -> None:
    """Call fn(step_name) before every step of every operation of this process."""
    _observers.append(fn)


@dataclass(frozen=True)
class Step:
    """One named step: what it does (for the dry run) and the callable that does it."""

    name: str
    does: str
    run: Callable[[], str | None] = field(repr=False, compare=False)

    def row(self) -> tuple[str, str]:
        return (self.name, self.does)


def rows(steps: Iterable[Step]) -> list[tuple[str, str]]:
    """The dry run of a step list: (name, what it does), in the order the run walks them."""
    return [s.row() for s in steps]


@dataclass
class Walker:
    """Walks steps for one environment, timing each and printing one line per step."""

    env: str
    printer: Printer
    timings: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        for seen in _observers:
            seen(name)
        start = time.perf_counter()
        detail = fn()
        took = time.perf_counter() - start
        self.timings[name] = round(took, 3)
        self.printer(f"{self.env}: {name:<9} {took:6.2f}s  {detail or 'ok'}")

    def walk(self, steps: Sequence[Step]) -> None:
        for s in steps:
            self.step(s.name, s.run)
