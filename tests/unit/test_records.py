"""``record``: slotted dataclasses compared and hashed by their fields, frozen for mypy."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from mypy import api

from consumer.events import SectionResult
from consumer.records import record


@record
class Point:
    x: int
    y: int = 0


@record(kw_only=True)
class Named:
    name: str


def test_records_compare_and_hash_by_their_fields() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert {Point(1, 2): "a"}[Point(1, 2)] == "a"


def test_a_record_takes_no_attribute_beyond_its_fields() -> None:
    with pytest.raises(AttributeError):
        Point(1).z = 3  # type: ignore[attr-defined]


def test_a_kw_only_record_refuses_positional_fields() -> None:
    with pytest.raises(TypeError):
        Named("a")  # type: ignore[misc]
    assert Named(name="a").name == "a"


def test_replace_makes_a_changed_copy() -> None:
    section = SectionResult(4.0, 2.5, 80.0, "B2")
    changed = dataclasses.replace(section, cefr="C1")
    assert (section.cefr, changed.cefr) == ("B2", "C1")


def _mypy(source: str) -> tuple[int, str]:
    stdout, stderr, status = api.run(["--config-file", "", "--strict", "-c", source])
    return status, stdout + stderr


def test_mypy_takes_a_record_as_frozen() -> None:
    reading = textwrap.dedent("""
        from consumer.events import SectionResult
        from consumer.records import record

        @record
        class Point:
            x: int

        point = Point(1)
        print(point.x, {point}, SectionResult(1.0, 1.0, 10.0, "A1").level)
    """)
    status, output = _mypy(reading)
    assert status == 0, output
    status, output = _mypy(reading + "point.x = 2\n")
    assert status == 1
    assert 'Property "x" defined in "Point" is read-only' in output
    status, output = _mypy(reading + "SectionResult(1.0, 1.0, 10.0, 'A1').level = 2.0\n")
    assert status == 1
    assert 'Property "level" defined in "SectionResult" is read-only' in output
