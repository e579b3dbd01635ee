"""The iTEP ``data`` payload (CONTRACT section 3) and its form body. Pure: no I/O.

Key order follows the legacy iTEP document. Numbers stay JSON numbers; dates are
``M/D/YYYY`` without zero padding; result keys are present but ``""`` unless Complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Final

import orjson

from consumer.events import ExamEvent, Status

SECTION_TITLES: Final = {
    "grammar": "Grammar",
    "listening": "Listening",
    "reading": "Reading",
    "writing": "Writing",
    "speaking": "Speaking",
}

Scalar = str | int | float


def exam_date(event: ExamEvent) -> date:
    """The date the test was finished: ``finished_on``, else the UTC date of ``occurred_at``."""
    if event.finished_on is not None:
        return event.finished_on
    return event.occurred_at.date()


def build_data(event: ExamEvent) -> dict[str, Scalar]:
    """The dict that becomes the ``data`` JSON string."""
    day = exam_date(event)
    data: dict[str, Scalar] = {
        "OID": event.oid,
        "TestID": event.test_id,
        "Duration": event.duration_minutes,
        "TestDate": f"{day.month}/{day.day}/{day.year}",
        "TestMonth": day.month,
        "TestDay": day.day,
        "TestYear": day.year,
        "Status": event.status.value,
        "score_report_url": "",
        "Overall_Level": "",
        "Overall_cefr": "",
    }
    results = event.results
    if event.status is not Status.COMPLETE or results is None:
        return data
    data["score_report_url"] = results.score_report_url
    data["Overall_Level"] = results.overall_level
    data["Overall_cefr"] = results.overall_cefr
    for name, (level, score, percent, cefr) in _SECTION_KEYS.items():
        section = results.sections.get(name)
        if section is None:
            continue
        data[level] = section.level
        data[score] = section.score
        data[percent] = section.percent
        data[cefr] = section.cefr
        if name == "writing":
            data["Writing_Question_Count"] = section.question_count or 0
            data.update(_WRITING_BLANKS)
    return data


# Each section's four keys, in the document's order, spelled once.
_SECTION_KEYS: Final = {
    name: (f"{title}_Level", f"{title}_Score", f"{title}_Percent", f"{title}_cefr")
    for name, title in SECTION_TITLES.items()
}
_WRITING_BLANKS: Final = {
    key: "" for n in (1, 2) for key in (f"Writing_Question_{n}", f"Writing_Answer_{n}")
}


def encode_data(event: ExamEvent) -> str:
    """The ``data`` field's JSON text (UTF-8, non-ASCII kept as is)."""
    return orjson.dumps(build_data(event)).decode()


# Each byte's form encoding, as ``urllib.parse.quote_plus`` writes it: unreserved bytes stay,
# space becomes ``+``, everything else ``%XX``. Applied with ``str.translate`` over the UTF-8
# bytes seen as Latin-1 characters (one per byte), which runs in C: 1.5x faster than
# ``quote_plus`` on a typical payload (20 us against 30 us, measured with timeit).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE: Final = {
    b: chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)
}


def form_quote(text: str) -> str:
    """``text`` as UTF-8, percent-encoded for a form body; equal to ``quote_plus(text)``."""
    return text.encode("utf-8").decode("latin-1").translate(_FORM_TABLE)


def encode_form(data_json: str, extra_fields: Mapping[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` body: ``data`` first, then the extra fields.

    ``+``, ``&``, ``%`` and ``=`` are percent-encoded and text is UTF-8, so PHP's
    ``$_POST['data']`` gets the JSON back byte for byte.
    """
    return _form(form_quote(data_json), extra_fields)


def _form(quoted_data_json: str, extra_fields: Mapping[str, str]) -> bytes:
    """``data=`` and the already encoded JSON, then the extra fields (never another ``data``)."""
    extra = "".join(
        f"&{form_quote(key)}={form_quote(value)}"
        for key, value in extra_fields.items()
        if key != "data"
    )
    return f"data={quoted_data_json}{extra}".encode("ascii")


# The form encoding of ``"<key>":`` for each key of the data dict (a few dozen names).
_QUOTED_KEYS: dict[str, str] = {}


def _quoted_key(key: str) -> str:
    quoted = _QUOTED_KEYS.get(key)
    if quoted is None:
        quoted = _QUOTED_KEYS[key] = form_quote(orjson.dumps(key).decode() + ":")
    return quoted


def quoted_data(data: Mapping[str, Scalar]) -> str:
    """``form_quote(orjson.dumps(data).decode())``, built field by field.

    Percent-encoding works byte by byte, so the encoding of the JSON object is that of its
    pieces joined: each key's ``"key":`` is encoded once and kept, and only the values are
    encoded per event. A third of the bytes of a typical payload need escaping, nearly all
    of them in the keys and the punctuation.
    """
    return (
        "%7B"
        + "%2C".join(_quoted_key(key) + _quoted_value(value) for key, value in data.items())
        + "%7D"
    )


# The form encoding of the JSON of small values: scores, levels, CEFR bands, dates and the
# status come from small sets and repeat from event to event. Kept by exact type and value;
# a float zero is left out, since 0.0 and -0.0 are equal but encode differently.
_QUOTED_VALUES: dict[tuple[type, Scalar], str] = {}
_QUOTED_VALUES_MAX: Final = 4096
_SHORT: Final = 16


def _quoted_value(value: Scalar) -> str:
    kind = type(value)
    short = len(value) <= _SHORT if isinstance(value, str) else kind is int or value != 0.0
    if not short:
        return form_quote(orjson.dumps(value).decode())
    cache_key = (kind, value)
    quoted = _QUOTED_VALUES.get(cache_key)
    if quoted is None:
        if len(_QUOTED_VALUES) >= _QUOTED_VALUES_MAX:
            _QUOTED_VALUES.clear()
        quoted = _QUOTED_VALUES[cache_key] = form_quote(orjson.dumps(value).decode())
    return quoted


def form_body(data: Mapping[str, Scalar], extra_fields: Mapping[str, str]) -> bytes:
    """``encode_form(orjson.dumps(data).decode(), extra_fields)``, the faster way."""
    return _form(quoted_data(data), extra_fields)
