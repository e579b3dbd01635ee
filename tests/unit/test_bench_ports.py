"""Ports for the service processes the bench starts: free, below the ephemeral range, never
handed out twice."""

from __future__ import annotations

import random

import pytest

from bench import stack


def test_a_port_is_not_handed_out_twice_even_when_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack, "_HANDED_OUT", set())
    draws = iter([23_456, 23_456, 23_457])
    monkeypatch.setattr(random, "randrange", lambda _low, _high: next(draws))
    assert [stack.free_port(), stack.free_port()] == [23_456, 23_457]


def test_many_ports_in_one_run_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [stack.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert max(ports) < stack._ephemeral_low()
