"""The one timing loop every measurement uses (the cost model's kernel latencies, rewrite's I8 kernel
choice, analysis's speedup, the compiler benchmark): untimed warm-up calls, then timed calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_micros", "run_times"]


def run_times(
    call: Callable[[], object], *, runs: int, warmup: int = 0, budget_s: float = 0.0
) -> list[float]:
    """Seconds each timed call of `call` took, after `warmup` untimed calls: `runs` calls at least,
    and more until `budget_s` seconds have passed since the first timed one (a fast kernel then gets
    enough samples for a stable median, a slow one no more than `runs`)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e9)
    return times


def median_micros(call: Callable[[], object], *, runs: int, warmup: int = 0, budget_s: float = 0.0) -> float:
    """The median of `run_times`, in microseconds."""
    return statistics.median(run_times(call, runs=runs, warmup=warmup, budget_s=budget_s)) * 1e6
