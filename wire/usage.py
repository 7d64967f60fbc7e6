"""The usage journal's record and page: written by the node, read by billing.

A node appends one `JournalRecord` per request that reached its engine and serves them in
`JournalPage`s on `GET /internal/usage?after=&limit=`. `version` names the record's shape so a
reader can refuse a shape it does not know instead of mis-billing it.

Version 2 keys a record on the attempt's own id (`request_id`, unique per attempt) and carries
the client's id beside it (`client_request_id`); version 1 had only the client's id, which is
read as both. Version 3 adds attribution and serving cost: the end user the client named
(`end_user`, from `safety_identifier` or `user`), the client's `metadata` tags, the request's
`trace_id` and `engine_ms` (its share of the engine's busy time); older records read them empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

JOURNAL_RECORD_VERSION = 3
# Versions this reader understands; an older one is read into the current shape.
JOURNAL_RECORD_VERSIONS = frozenset({1, 2, 3})

Outcome = Literal["stop", "length", "aborted", "error"]

# OpenAI's limits on `metadata` (and the ledger's on an end-user id).
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
END_USER_MAX = 256
TRACE_ID_LENGTH = 32  # W3C trace id: 32 lowercase hex digits


class UnknownRecordVersion(ValueError):
    """A page holds a record of a version this reader does not know (newer node): stop, do not skip."""


class JournalRecord(BaseModel):
    """One request's usage, as the node journals it and the control plane bills it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = JOURNAL_RECORD_VERSION
    seq: int = Field(default=0, ge=0)  # given by the journal when written; 0 before
    request_id: str = Field(min_length=1)  # the attempt's id: unique, what usage is keyed on
    client_request_id: str = ""  # the client's x-request-id, for correlation only
    tenant: int = Field(ge=0)  # the tenant's id
    key: int | None = None  # the API key's id
    model: str = Field(min_length=1)
    model_version: str = ""
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    outcome: Outcome
    queue_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    duration_ms: float = Field(ge=0)
    started_at: str  # ISO 8601, UTC
    finished_at: str
    end_user: str = Field(default="", max_length=END_USER_MAX)
    metadata: dict[str, str] = Field(default_factory=dict)
    trace_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")
    engine_ms: float = Field(default=0.0, ge=0)  # this request's share of the engine's busy time

    @model_validator(mode="before")
    @classmethod
    def _client_id(cls, data: Any) -> Any:
        # Version 1 knew only one id (the client's); an empty client id means "the attempt's own".
        if isinstance(data, Mapping) and not data.get("client_request_id"):
            return {**data, "client_request_id": data.get("request_id") or ""}
        return data

    @field_validator("key", mode="before")
    @classmethod
    def _no_key(cls, value: Any) -> Any:
        # Journals written before the key became an id store "" for "no key".
        return None if value == "" else value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > METADATA_MAX_PAIRS:
            raise ValueError(f"metadata holds at most {METADATA_MAX_PAIRS} pairs")
        for name, text in value.items():
            if not name or len(name) > METADATA_MAX_KEY:
                raise ValueError(f"metadata keys are 1 to {METADATA_MAX_KEY} characters")
            if len(text) > METADATA_MAX_VALUE:
                raise ValueError(f"metadata values are at most {METADATA_MAX_VALUE} characters")
        return value

    @field_validator("model_version", mode="before")
    @classmethod
    def _no_version(cls, value: Any) -> Any:
        return "" if value is None else value


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record in a page that does not have the journal record's shape; `request_id` as sent."""

    request_id: object
    reason: str


class JournalPage(BaseModel):
    """Records with seq > after, oldest first; `next_after` is the cursor for the next page."""

    records: list[JournalRecord]
    next_after: int = Field(ge=0)
    has_more: bool

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> tuple[JournalPage, list[RejectedRecord]]:
        """Reads a page record by record: a malformed record is returned as rejected, never fatal.

        Raises ValueError when the page itself is malformed and UnknownRecordVersion when a record
        is of a newer version (the caller keeps its cursor and tries again once upgraded).
        """
        raw_records = data.get("records", [])
        if not isinstance(raw_records, list):
            raise ValueError("records must be a list")
        records: list[JournalRecord] = []
        rejected: list[RejectedRecord] = []
        for raw in raw_records:
            if not isinstance(raw, Mapping):
                rejected.append(RejectedRecord(request_id=None, reason="a record must be an object"))
                continue
            version = raw.get("version", 1)
            if version not in JOURNAL_RECORD_VERSIONS:
                known = ", ".join(str(v) for v in sorted(JOURNAL_RECORD_VERSIONS))
                raise UnknownRecordVersion(f"journal record version {version!r} is not one of {known}")
            try:
                # Read into the current shape (an old record gains the fields it lacked).
                records.append(JournalRecord.model_validate({**raw, "version": JOURNAL_RECORD_VERSION}))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                rejected.append(RejectedRecord(request_id=raw.get("request_id"), reason=f"{where}: {first['msg']}"))
        page = cls.model_validate(
            {"records": records, "next_after": data.get("next_after"), "has_more": data.get("has_more", False)}
        )
        return page, rejected
