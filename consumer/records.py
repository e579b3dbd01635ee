"""``record``: the dataclass of the values made once or more per webhook.

A ``frozen=True`` dataclass sets each field in ``__init__`` through ``object.__setattr__``,
a call per field: 0.6-0.75 µs for five fields, where a plain slotted dataclass takes
0.19 µs. About ninety fields are set per webhook (the event and its five sections, the
decision, the delivery, the request, the result, the outcome record); making those classes
records cut the service's CPU per webhook by 6-7% (``bench.paired``, BENCHMARKS.md, eighth
round). Values made rarely (settings, tracking codes) stay frozen dataclasses.

A ``record`` class is a slotted dataclass with equality and a hash over its fields, built
at the plain speed. Type checkers see it as frozen (PEP 681's ``frozen_default``): assigning
to a field is a mypy error, caught by ``make lint``, not a runtime one. Change one with
``dataclasses.replace``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(
    cls: type[_T] | None = None, /, *, kw_only: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    def wrap(cls: type[_T]) -> type[_T]:
        return dataclass(slots=True, eq=True, unsafe_hash=True, kw_only=kw_only)(cls)

    return wrap if cls is None else wrap(cls)
