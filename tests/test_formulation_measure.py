"""The one-time formulation measurement (engine/stages/formulation.py) runs rounds
until its ranking settles, so one slow round on a shared machine does not decide
the record. A scripted clock makes each candidate's call take a stated time."""

from __future__ import annotations

import pytest

from engine.stages.formulation import SETTLE_ROUNDS, TIE_MARGIN, measure


class Script:
    """``candidates`` whose calls take the scripted seconds (warm-up first)."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        self.now, self.calls = 0.0, []
        self.times = {k: list(v) for k, v in times.items()}

    def clock(self) -> float:
        return self.now

    def candidates(self):
        def call(k):
            def fn():
                self.calls.append(k)
                self.now += self.times[k].pop(0)
            return fn
        return {k: call(k) for k in self.times}


def test_a_clear_leader_settles_after_the_minimum_rounds():
    s = Script({"a": [9, 1.0, 1.0, 1.0], "b": [9, 2.0, 2.0, 2.0]})
    m = measure(s.candidates(), "cpu", rounds=(2, 6), clock=s.clock)
    assert (m.choice, m.rounds, m.settled) == ("a", 2, True)
    assert m.seconds == {"a": 1.0, "b": 2.0} and m.margin == pytest.approx(1.0)
    # the order rotates each round: warm-up a b, then a b, then b a
    assert s.calls == ["a", "b", "a", "b", "b", "a"]


def test_a_slow_round_does_not_decide():
    """Round 1: 'b' is slowed by another process and 'a' leads; later rounds show
    'b' is faster. Two passes (the old rule) would have recorded 'a'."""
    s = Script({"a": [9, 1.0, 1.0, 1.0, 1.0, 1.0],
                "b": [9, 3.0, 0.98, 0.7, 0.7, 0.7]})
    m = measure(s.candidates(), "cpu", rounds=(2, 6), clock=s.clock)
    # round 2: b takes the lead (by 2 %); round 3: b leads by 43 % and has held
    # for SETTLE_ROUNDS rounds
    assert m.choice == "b" and m.settled and not m.tie
    assert SETTLE_ROUNDS == 2 and m.rounds == 3
    assert m.seconds["b"] == pytest.approx(0.7)


def test_a_tie_is_recorded_as_one():
    s = Script({"a": [9] + [1.00] * 5, "b": [9] + [1.01] * 5})
    m = measure(s.candidates(), "cpu", rounds=(2, 5), clock=s.clock)
    assert (m.rounds, m.settled, m.choice) == (2, True, "a")
    assert m.margin == pytest.approx(0.01) and m.margin < TIE_MARGIN and m.tie


def test_a_lead_that_changes_hands_runs_to_the_round_limit():
    # fastest calls so far: a 1.0 | b 0.9 | a 0.8 | b 0.7 | a 0.6
    s = Script({"a": [9, 1.0, 1.0, 0.8, 0.8, 0.6], "b": [9, 2.0, 0.9, 0.9, 0.7, 0.7]})
    m = measure(s.candidates(), "cpu", rounds=(2, 5), clock=s.clock)
    assert (m.rounds, m.settled, m.choice) == (5, False, "a")
    assert m.seconds == pytest.approx({"a": 0.6, "b": 0.7})
