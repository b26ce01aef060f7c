"""The benchmark's rounds balance the order of the sides (bench/harness.py)."""

from bench.harness import round_order


def test_two_sides_alternate_which_runs_first() -> None:
    orders = [round_order(["orchestrator", "floor"], r) for r in range(4)]
    assert orders == [
        ["orchestrator", "floor"],
        ["floor", "orchestrator"],
        ["orchestrator", "floor"],
        ["floor", "orchestrator"],
    ]


def test_every_side_has_the_same_mean_position_over_two_rounds() -> None:
    names = ["orchestrator", "floor", "baseline"]
    for first in range(0, 6, 2):
        pair = [round_order(names, first), round_order(names, first + 1)]
        assert all(sorted(order) == sorted(names) for order in pair)
        positions = {name: sum(order.index(name) for order in pair) for name in names}
        assert set(positions.values()) == {len(names) - 1}, positions


def test_the_orchestrator_does_not_always_follow_the_baseline() -> None:
    names = ["orchestrator", "floor", "baseline"]
    sequence = [name for r in range(3) for name in round_order(names, r)]
    before = {a for a, b in zip(sequence, sequence[1:], strict=False) if b == "orchestrator"}
    assert before != {"baseline"}
    assert "floor" in before


def test_the_caller_s_list_is_left_alone() -> None:
    names = ["a", "b"]
    round_order(names, 1)
    assert names == ["a", "b"]
