"""The benchmark's interval for the median of its rounds (bench/measure.py)."""

import math
import random

import pytest

from bench.measure import median_interval


def test_five_rounds_give_the_widest_interval_and_its_chance() -> None:
    low, high, chance = median_interval([0.93, 0.71, 1.1, 0.9, 0.95])
    assert (low, high) == (0.71, 1.1)
    assert chance == pytest.approx(1 - 2 / 32)  # all five on one side: 2 x (1/2)^5


def test_fifteen_rounds_narrow_it_to_the_4th_smallest_and_largest() -> None:
    values = [float(v) for v in range(15, 0, -1)]
    low, high, chance = median_interval(values, confidence=0.9)
    assert (low, high) == (4.0, 12.0)
    below = sum(math.comb(15, i) for i in range(4)) / 2**15
    assert chance == pytest.approx(1 - 2 * below)
    assert chance >= 0.9
    assert median_interval(values, confidence=0.95)[:2] == (4.0, 12.0)
    assert median_interval(values, confidence=0.97)[:2] == (3.0, 13.0)


def test_the_interval_covers_the_true_median_as_often_as_it_says() -> None:
    """Rounds drawn from a known distribution (seeded: the same draw every run)."""
    draw = random.Random(20261206)
    hits = trials = 0
    for _ in range(4000):
        rounds = [draw.gauss(0.92, 0.08) for _ in range(9)]
        low, high, chance = median_interval(rounds)
        hits += low <= 0.92 <= high
        trials += 1
    assert chance == pytest.approx(1 - 2 * (1 + 9) / 512)  # the 2nd smallest and largest
    assert abs(hits / trials - chance) < 0.02


def test_one_value_and_none() -> None:
    assert median_interval([0.9]) == (0.9, 0.9, 0.0)
    with pytest.raises(ValueError):
        median_interval([])
