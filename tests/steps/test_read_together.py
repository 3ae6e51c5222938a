"""read_together: one resource's independent reads at once, bounded, failures as in order."""

from __future__ import annotations

import threading

import pytest

from iotpipe.steps.base import READ_FANOUT, read_together


def test_answers_come_back_by_name():
    assert read_together({"a": lambda: 1, "b": lambda: 2, "c": lambda: 3}) == {"a": 1, "b": 2, "c": 3}


def test_reads_run_at_once_but_never_more_than_the_fanout():
    """READ_FANOUT reads meet at a barrier (so they did run at the same time); no more ever run."""
    meet = threading.Barrier(READ_FANOUT, timeout=30)
    lock = threading.Lock()
    running = [0, 0]  # now, most

    def read(n: int):
        def go() -> int:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            try:
                if n < READ_FANOUT:
                    meet.wait()
                return n
            finally:
                with lock:
                    running[0] -= 1
        return go

    answers = read_together({f"r{n}": read(n) for n in range(3 * READ_FANOUT)})
    assert answers == {f"r{n}": n for n in range(3 * READ_FANOUT)}
    assert running[1] == READ_FANOUT


def test_the_first_failure_in_order_is_raised_after_every_read_ended():
    ended = []

    def fails(message: str):
        def go():
            ended.append(message)
            raise ValueError(message)
        return go

    def fine():
        ended.append("fine")
        return 1

    with pytest.raises(ValueError, match="first"):
        read_together({"x": fails("first"), "y": fine, "z": fails("second")})
    assert sorted(ended) == ["fine", "first", "second"]
