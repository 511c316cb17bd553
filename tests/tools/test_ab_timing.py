"""tools.ab_timing: the ways take turns, the warm-up round is dropped, and the summaries say what was measured."""
import sys

import pytest

from tools import ab_timing


def test_ways_take_turns_in_alternating_order_and_the_first_round_is_not_kept():
    calls = []
    ways = {name: (lambda name=name: calls.append(name) or f"{name}{len(calls)}") for name in ("a", "b")}
    results = ab_timing.interleaved(ways, runs=3)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # b ran right after a in every round
    assert results == {"a": ["a4", "a5", "a8"], "b": ["b3", "b6", "b7"]}


def test_spread_and_pairwise_ratios():
    assert ab_timing.spread([3.0, 1.0, 2.0]) == "median 2.0 (min 1.0, max 3.0)"
    assert ab_timing.pairwise([2.0, 3.0, 8.0], [4.0, 3.0, 4.0]) == "median 1.00 (min 0.50, max 2.00)"


def test_run_timed_adds_walls_and_keeps_the_largest_peak():
    grow = [sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    idle = [sys.executable, "-c", "pass"]
    wall_one, peak_one = ab_timing.run_timed([idle])
    wall_two, peak_two = ab_timing.run_timed([idle, grow])
    assert wall_two > 0 and wall_one > 0
    assert peak_two >= 200 > peak_one  # MiB: the 200 MiB child's peak; the small one's is not floored by ours
    assert peak_one < 100, "a small child's peak is its own, not the (large) test process's"


def test_a_failing_command_stops_with_its_error():
    with pytest.raises(SystemExit, match=r"failed \(exit 3\):\n.*boom"):
        ab_timing.run_timed([[sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]])


def test_negative_runs_are_refused():
    # range(runs + 1) ran no round at all, and the tools then compared outputs that were never written
    with pytest.raises(ValueError, match="runs must be >= 0"):
        ab_timing.interleaved({"a": lambda: 1}, runs=-1)
