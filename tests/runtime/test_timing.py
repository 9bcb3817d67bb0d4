"""The one timing loop (runtime.timing), on a fake clock: how many calls are warm-up, timed, and how
the budget extends the timed ones. No real time is asserted."""

from __future__ import annotations

import pytest

from bitnet_onnx.runtime import timing


class _Clock:
    """perf_counter and perf_counter_ns of a clock that only moves when the measured call runs."""

    def __init__(self, call_ns: list[int]) -> None:
        self.ns = 0
        self.call_ns = call_ns  # how long each call takes, in turn
        self.calls = 0

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def perf_counter_ns(self) -> int:
        return self.ns

    def call(self) -> None:
        self.ns += self.call_ns[self.calls % len(self.call_ns)]
        self.calls += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock([1000, 3000, 2000])
    monkeypatch.setattr(timing.time, "perf_counter", fake.perf_counter)
    monkeypatch.setattr(timing.time, "perf_counter_ns", fake.perf_counter_ns)
    return fake


@pytest.mark.parametrize(("runs", "warmup"), [(1, 0), (3, 2), (5, 1)])
def test_warmup_calls_are_not_timed_and_runs_are(clock: _Clock, runs: int, warmup: int) -> None:
    times = timing.run_times(clock.call, runs=runs, warmup=warmup)
    assert clock.calls == warmup + runs
    expected = [clock.call_ns[i % 3] / 1e9 for i in range(warmup, warmup + runs)]
    assert times == pytest.approx(expected)


@pytest.mark.parametrize(("budget_s", "calls"), [(0.0, 2), (5e-6, 3), (9e-6, 5)])
def test_the_budget_adds_calls_until_it_is_spent(clock: _Clock, budget_s: float, calls: int) -> None:
    # the calls take 1, 3, 2, 1, 3 µs: the clock reads 1, 4, 6, 7, 10 µs after each
    times = timing.run_times(clock.call, runs=2, budget_s=budget_s)
    assert len(times) == calls and clock.calls == calls
    assert sum(times) >= budget_s


def test_median_micros_is_the_median_in_microseconds(clock: _Clock) -> None:
    assert timing.median_micros(clock.call, runs=3) == pytest.approx(2.0)  # of 1, 3 and 2 µs
    assert timing.median_micros(clock.call, runs=2, warmup=1) == pytest.approx(2.5)  # 1 µs untimed; 3, 2
