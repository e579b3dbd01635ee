"""``build_data``, ``encode_data`` and ``encode_form``: the webhook body of CONTRACT section 3."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, Final
from urllib.parse import parse_qs, quote_plus, urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.events import SECTION_NAMES, ExamEvent, parse_event
from consumer.payload import (
    build_data,
    encode_data,
    encode_form,
    form_body,
    form_quote_translate,
    form_quote_yarl,
)
from consumer.payload import exam_date as date_of_test
from tests.strategies import (
    COMPLETE_NAMES,
    contract_example,
    encode_event,
    event_dicts,
    texts,
    utc_date_of,
)

BASE_KEYS: Final = [
    "OID",
    "TestID",
    "Duration",
    "TestDate",
    "TestMonth",
    "TestDay",
    "TestYear",
    "Status",
    "score_report_url",
    "Overall_Level",
    "Overall_cefr",
]
TITLES: Final = {name: name.title() for name in SECTION_NAMES}
WRITING_EXTRAS: Final = [
    "Writing_Question_Count",
    "Writing_Question_1",
    "Writing_Answer_1",
    "Writing_Question_2",
    "Writing_Answer_2",
]

CONTRACT_DATA: Final[dict[str, Any]] = {
    "OID": "crm-000042",
    "TestID": "50613490BP",
    "Duration": 87,
    "TestDate": "11/24/2026",
    "TestMonth": 11,
    "TestDay": 24,
    "TestYear": 2026,
    "Status": "Complete",
    "score_report_url": "https://results.example.org/r/50613490BP?sig=a+b&x=1",
    "Overall_Level": 4.3,
    "Overall_cefr": "B2",
    "Grammar_Level": 4.0,
    "Grammar_Score": 41,
    "Grammar_Percent": 67,
    "Grammar_cefr": "B1",
    "Listening_Level": 3.5,
    "Listening_Score": 62,
    "Listening_Percent": 62,
    "Listening_cefr": "B1",
    "Reading_Level": 4.0,
    "Reading_Score": 70,
    "Reading_Percent": 70,
    "Reading_cefr": "B2",
    "Writing_Level": 3.0,
    "Writing_Score": 62,
    "Writing_Percent": 62,
    "Writing_cefr": "B1",
    "Writing_Question_Count": 2,
    "Writing_Question_1": "",
    "Writing_Answer_1": "",
    "Writing_Question_2": "",
    "Writing_Answer_2": "",
    "Speaking_Level": 3.0,
    "Speaking_Score": 62,
    "Speaking_Percent": 62,
    "Speaking_cefr": "C1+",
}

CONTRACT_JSON: Final = (
    '{"OID":"crm-000042","TestID":"50613490BP","Duration":87,"TestDate":"11/24/2026",'
    '"TestMonth":11,"TestDay":24,"TestYear":2026,"Status":"Complete",'
    '"score_report_url":"https://results.example.org/r/50613490BP?sig=a+b&x=1",'
    '"Overall_Level":4.3,"Overall_cefr":"B2",'
    '"Grammar_Level":4.0,"Grammar_Score":41,"Grammar_Percent":67,"Grammar_cefr":"B1",'
    '"Listening_Level":3.5,"Listening_Score":62,"Listening_Percent":62,"Listening_cefr":"B1",'
    '"Reading_Level":4.0,"Reading_Score":70,"Reading_Percent":70,"Reading_cefr":"B2",'
    '"Writing_Level":3.0,"Writing_Score":62,"Writing_Percent":62,"Writing_cefr":"B1",'
    '"Writing_Question_Count":2,"Writing_Question_1":"","Writing_Answer_1":"",'
    '"Writing_Question_2":"","Writing_Answer_2":"",'
    '"Speaking_Level":3.0,"Speaking_Score":62,"Speaking_Percent":62,"Speaking_cefr":"C1+"}'
)


def parse(doc: dict[str, Any]) -> ExamEvent:
    return parse_event(encode_event(doc))


def typed(data: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Keys in order with the type of each value, so that ``4 == 4.0`` does not pass."""
    return [(key, type(value), value) for key, value in data.items()]


def decode_form(body: bytes) -> dict[str, list[str]]:
    """What a form parser (as PHP's ``$_POST``) reads from the body."""
    return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


# --------------------------------------------------------------------------------------------
# The data dict


def test_contract_example_builds_the_expected_data() -> None:
    """The example event gives exactly the documented keys, values, types and order."""
    assert typed(build_data(parse(contract_example()))) == typed(CONTRACT_DATA)


def test_contract_example_encodes_to_the_expected_json() -> None:
    """``data`` is compact JSON with ints as ints and ``4.0`` kept a float."""
    assert encode_data(parse(contract_example())) == CONTRACT_JSON


def test_sections_follow_the_documented_order() -> None:
    """Section groups come in Grammar, Listening, Reading, Writing, Speaking order."""
    doc = contract_example()
    doc["results"]["sections"] = dict(reversed(doc["results"]["sections"].items()))
    assert list(build_data(parse(doc))) == list(CONTRACT_DATA)


@pytest.mark.parametrize(
    "status",
    [
        "Ready",
        "Incomplete",
        "Started",
        "Finished",
        "Review",
        "Problem",
        "Technical Difficulty",
        "Invalidated",
        "Disabled",
    ],
)
def test_results_are_blank_unless_complete(status: str) -> None:
    """Unless Complete, the result keys are ``""`` and no section keys are sent."""
    data = build_data(parse({**contract_example(), "status": status}))
    assert list(data) == BASE_KEYS
    assert data["score_report_url"] == data["Overall_Level"] == data["Overall_cefr"] == ""


@pytest.mark.parametrize(
    ("status", "expected"),
    [("Started", "Incomplete"), ("Technical Difficulty", "Problem"), ("Completed", "Complete")],
)
def test_status_is_the_normalised_name(status: str, expected: str) -> None:
    """``Status`` carries today's name, never the legacy one."""
    assert build_data(parse({**contract_example(), "status": status}))["Status"] == expected


def test_writing_keys_only_with_the_writing_section() -> None:
    """Without a writing section there is no ``Writing_*`` key at all."""
    doc = contract_example()
    del doc["results"]["sections"]["writing"]
    data = build_data(parse(doc))
    assert not [key for key in data if key.startswith("Writing")]
    assert "Speaking_cefr" in data


def test_writing_section_alone_brings_its_question_keys() -> None:
    """The writing group is followed by its count (a number) and four empty Q&A keys."""
    doc = contract_example()
    doc["results"]["sections"] = {
        "writing": {"level": 2, "score": 0, "percent": 0.5, "cefr": "A2", "question_count": 0}
    }
    data = build_data(parse(doc))
    assert typed(data)[len(BASE_KEYS) :] == [
        ("Writing_Level", int, 2),
        ("Writing_Score", int, 0),
        ("Writing_Percent", float, 0.5),
        ("Writing_cefr", str, "A2"),
        ("Writing_Question_Count", int, 0),
        ("Writing_Question_1", str, ""),
        ("Writing_Answer_1", str, ""),
        ("Writing_Question_2", str, ""),
        ("Writing_Answer_2", str, ""),
    ]


def test_complete_without_sections_sends_overall_only() -> None:
    """A Complete event with no sections sends the base keys with overall values."""
    doc = contract_example()
    doc["results"]["sections"] = {}
    data = build_data(parse(doc))
    assert list(data) == BASE_KEYS
    assert (data["Overall_Level"], data["Overall_cefr"]) == (4.3, "B2")


@pytest.mark.parametrize(
    ("finished_on", "occurred_at", "expected"),
    [
        ("2026-01-05", "2026-11-25T16:02:11Z", ("1/5/2026", 1, 5, 2026)),
        ("2026-12-31", "2026-11-25T16:02:11Z", ("12/31/2026", 12, 31, 2026)),
        ("1901-01-01", "2026-11-25T16:02:11Z", ("1/1/1901", 1, 1, 1901)),
        (None, "2026-01-01T01:00:00+05:00", ("12/31/2025", 12, 31, 2025)),
        (None, "2026-03-09T23:30:00-02:00", ("3/10/2026", 3, 10, 2026)),
        (None, "2026-07-04T00:00:00Z", ("7/4/2026", 7, 4, 2026)),
    ],
)
def test_test_date_is_unpadded_from_finished_on_else_utc_occurred_at(
    finished_on: str | None, occurred_at: str, expected: tuple[str, int, int, int]
) -> None:
    """``TestDate`` is ``M/D/YYYY`` of ``finished_on``, else of ``occurred_at`` in UTC."""
    doc = {**contract_example(), "finished_on": finished_on, "occurred_at": occurred_at}
    data = build_data(parse(doc))
    assert (data["TestDate"], data["TestMonth"], data["TestDay"], data["TestYear"]) == expected


def test_non_ascii_is_kept_in_the_json() -> None:
    """``data`` holds non-ASCII text as UTF-8, not as ``\\u`` escapes."""
    text = encode_data(parse({**contract_example(), "oid": "Zürich-中文"}))
    assert '"OID":"Zürich-中文"' in text


# --------------------------------------------------------------------------------------------
# The form body


def test_form_body_encodes_plus_and_ampersand() -> None:
    """``+``, ``&``, ``%`` and ``=`` inside the JSON are percent-encoded, not left raw."""
    body = encode_form('{"u":"a+b&x=1%"}', {})
    assert body == b"data=%7B%22u%22%3A%22a%2Bb%26x%3D1%25%22%7D"


def test_form_body_puts_data_first_then_extra_fields() -> None:
    """Extra fields follow ``data`` in their own order."""
    body = encode_form("{}", {"partner": "acme", "campus": "Nord Süd"})
    assert body == b"data=%7B%7D&partner=acme&campus=Nord+S%C3%BCd"


def test_extra_field_named_data_does_not_replace_data() -> None:
    """An extra field called ``data`` is dropped: ``data`` is only ever the payload."""
    assert decode_form(encode_form("{}", {"data": "evil", "k": "v"})) == {
        "data": ["{}"],
        "k": ["v"],
    }


def test_contract_example_survives_the_form() -> None:
    """The example's URL with ``+`` and ``&`` arrives intact after form decoding."""
    form = decode_form(encode_form(encode_data(parse(contract_example())), {}))
    data = orjson.loads(form["data"][0])
    assert data["score_report_url"] == "https://results.example.org/r/50613490BP?sig=a+b&x=1"


# --------------------------------------------------------------------------------------------
# Properties

extra_fields = st.dictionaries(
    texts(min_size=1, max_size=8).filter(lambda key: key != "data"), texts(), max_size=4
)


@given(doc=event_dicts(), extra=extra_fields)
def test_any_event_round_trips_through_the_form(doc: dict[str, Any], extra: dict[str, str]) -> None:
    """Form-decoding then JSON-decoding the body gives back ``build_data`` and the extras."""
    event = parse(doc)
    form = decode_form(encode_form(encode_data(event), extra))
    assert list(form) == ["data", *extra]
    assert typed(orjson.loads(form["data"][0])) == typed(build_data(event))
    assert {key: values for key, values in form.items() if key != "data"} == {
        key: [value] for key, value in extra.items()
    }


@given(doc=event_dicts(), extra=extra_fields)
def test_the_body_of_the_data_dict_is_byte_identical_to_encoding_its_json(
    doc: dict[str, Any], extra: dict[str, str]
) -> None:
    """``form_body`` over the ``data`` dict equals ``encode_form`` over its JSON."""
    event = parse(doc)
    assert form_body(build_data(event), extra) == encode_form(encode_data(event), extra)


@given(event_dicts())
def test_any_event_gives_the_documented_keys(doc: dict[str, Any]) -> None:
    """Keys follow the table: base keys, then one group per section only when Complete."""
    data = build_data(parse(doc))
    expected = list(BASE_KEYS)
    if doc["status"] in COMPLETE_NAMES:
        present = doc["results"].get("sections") or {}
        for name in SECTION_NAMES:
            if name in present:
                title = TITLES[name]
                expected += [f"{title}_Level", f"{title}_Score", f"{title}_Percent"]
                expected += [f"{title}_cefr"]
                if name == "writing":
                    expected += WRITING_EXTRAS
    assert list(data) == expected
    assert all(type(value) in (str, int, float) for value in data.values())


@given(event_dicts())
def test_any_event_dates_from_finished_on_or_utc_occurred_at(doc: dict[str, Any]) -> None:
    """The test date is ``finished_on`` when given, else the UTC date of ``occurred_at``."""
    event = parse(doc)
    finished = doc.get("finished_on")
    day = date.fromisoformat(finished) if finished else utc_date_of(doc["occurred_at"])
    assert date_of_test(event) == day
    data = build_data(event)
    assert data["TestDate"] == f"{day.month}/{day.day}/{day.year}"
    assert (data["TestMonth"], data["TestDay"], data["TestYear"]) == (day.month, day.day, day.year)


@given(st.text(), st.dictionaries(st.text(min_size=1), st.text(), max_size=3))
def test_form_body_is_byte_identical_to_urllib_urlencode(data: str, extra: dict[str, str]) -> None:
    """The fast encoder writes exactly what ``urllib.parse.urlencode`` writes."""
    fields = [("data", data), *((k, v) for k, v in extra.items() if k != "data")]
    assert encode_form(data, extra) == urlencode(fields).encode("ascii")


@pytest.mark.parametrize("quote", [form_quote_yarl, form_quote_translate])
@given(text=st.text())
def test_both_form_quoters_write_what_quote_plus_writes(
    quote: Callable[[str], str], text: str
) -> None:
    """The C quoter of yarl (with the sub-delimiters it leaves encoded after it) and the
    ``str.translate`` one (used without yarl's C extension) agree with ``quote_plus``."""
    assert quote(text) == quote_plus(text)
