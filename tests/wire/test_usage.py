"""The journal record and page: one definition, versioned, the same on both sides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wire.usage import JOURNAL_RECORD_VERSION, JournalPage, JournalRecord, UnknownRecordVersion

RECORD = JournalRecord(
    seq=3,
    request_id="att-1",
    client_request_id="req-1",
    tenant=42,
    key=7,
    model="demo-llama",
    model_version="v1",
    prompt_tokens=5,
    completion_tokens=3,
    outcome="length",
    queue_ms=0.5,
    ttft_ms=1.25,
    duration_ms=9.0,
    started_at="2026-03-01T10:00:00.000Z",
    finished_at="2026-03-01T10:00:00.009Z",
)


def test_record_carries_its_version_and_round_trips() -> None:
    assert RECORD.version == JOURNAL_RECORD_VERSION == 3
    dumped = RECORD.model_dump()
    assert dumped["version"] == 3 and dumped["request_id"] == "att-1" and dumped["client_request_id"] == "req-1"
    assert dumped["tenant"] == 42 and dumped["key"] == 7
    assert JournalRecord.model_validate(dumped) == RECORD
    assert JournalRecord.model_validate_json(RECORD.model_dump_json()) == RECORD


def test_page_round_trips() -> None:
    page = JournalPage(records=[RECORD], next_after=3, has_more=False)
    parsed, rejected = JournalPage.parse(page.model_dump())
    assert (parsed, rejected) == (page, [])


def test_records_of_older_journals_still_read() -> None:
    # Before ids were integers on the wire: tenant and key as strings, "" for no key, no version.
    legacy = {**RECORD.model_dump(), "tenant": "42", "key": ""}
    del legacy["version"]
    parsed = JournalRecord.model_validate(legacy)
    assert (parsed.tenant, parsed.key) == (42, None)


def test_version_1_records_read_with_the_one_id_as_both() -> None:
    # Version 1 had only the client's id: it names the attempt and the client's request.
    v1 = {**RECORD.model_dump(), "version": 1, "request_id": "req-9"}
    del v1["client_request_id"]
    page, rejected = JournalPage.parse({"records": [v1], "next_after": 3, "has_more": False})
    assert rejected == []
    record = page.records[0]
    assert (record.version, record.request_id, record.client_request_id) == (3, "req-9", "req-9")
    unversioned = {k: v for k, v in v1.items() if k != "version"}
    assert JournalPage.parse({"records": [unversioned], "next_after": 3, "has_more": False})[0].records == [record]


def test_version_2_records_read_with_no_attribution_and_no_cost() -> None:
    v2 = {**RECORD.model_dump(), "version": 2}
    for added in ("end_user", "metadata", "trace_id", "engine_ms"):
        del v2[added]
    page, rejected = JournalPage.parse({"records": [v2], "next_after": 3, "has_more": False})
    assert rejected == [] and page.records == [RECORD]
    assert (RECORD.end_user, RECORD.metadata, RECORD.trace_id, RECORD.engine_ms) == ("", {}, "", 0.0)


def test_attribution_and_cost_round_trip() -> None:
    traced = RECORD.model_copy(
        update={"end_user": "user-7", "metadata": {"team": "search"}, "trace_id": "ab" * 16, "engine_ms": 12.5}
    )
    parsed, rejected = JournalPage.parse({"records": [traced.model_dump()], "next_after": 3, "has_more": False})
    assert rejected == [] and parsed.records == [traced]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("metadata", {f"k{i}": "v" for i in range(17)}, "16 pairs"),
        ("metadata", {"k" * 65: "v"}, "keys"),
        ("metadata", {"": "v"}, "keys"),
        ("metadata", {"k": "v" * 513}, "values"),
        ("metadata", {"k": 1}, "metadata"),
        ("end_user", "u" * 257, "end_user"),
        ("trace_id", "not-a-trace", "trace_id"),
        ("trace_id", "AB" * 16, "trace_id"),
        ("engine_ms", -1, "engine_ms"),
    ],
)
def test_attribution_out_of_bounds_rejects_the_record(field: str, value: object, says: str) -> None:
    bad = {**RECORD.model_dump(), "request_id": "req-4", field: value}
    page, rejected = JournalPage.parse({"records": [bad], "next_after": 3, "has_more": False})
    assert page.records == [] and [r.request_id for r in rejected] == ["req-4"]
    assert says in rejected[0].reason


def test_a_malformed_record_is_rejected_alone() -> None:
    good = RECORD.model_dump()
    bad = {**good, "request_id": "req-2", "prompt_tokens": -1}
    odd = {**good, "request_id": "req-3", "outcome": "exploded"}
    page, rejected = JournalPage.parse({"records": [good, bad, odd, "nope"], "next_after": 9, "has_more": True})
    assert page.records == [RECORD] and (page.next_after, page.has_more) == (9, True)
    assert [r.request_id for r in rejected] == ["req-2", "req-3", None]
    assert "prompt_tokens" in rejected[0].reason and "outcome" in rejected[1].reason


def test_a_newer_record_version_stops_the_page() -> None:
    newer = {**RECORD.model_dump(), "version": JOURNAL_RECORD_VERSION + 1}
    with pytest.raises(UnknownRecordVersion):
        JournalPage.parse({"records": [newer], "next_after": 3, "has_more": False})


def test_a_malformed_page_is_an_error() -> None:
    with pytest.raises(ValueError):
        JournalPage.parse({"records": {}, "next_after": 3, "has_more": False})
    with pytest.raises(ValidationError):
        JournalPage.parse({"records": [], "has_more": False})
