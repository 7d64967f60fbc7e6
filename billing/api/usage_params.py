"""The usage API's attribution parameters: `group_by=user` and `group_by=metadata.<key>`, and the
filters `users=<a>,<b>` and `metadata.<key>=<value>` (several keys: all must match)."""

from __future__ import annotations

from django.http import QueryDict

from billing.usage_attribution import AttributionQuery
from core.errors import ValidationFailed
from wire.usage import END_USER_MAX, METADATA_MAX_KEY, METADATA_MAX_PAIRS, METADATA_MAX_VALUE

MAX_USERS = 100  # per request, as for the other list filters
TAG_PREFIX = "metadata."
GROUPS = ("model", "key", "user")


def _tag_name(raw: str, param: str) -> str:
    name = raw[len(TAG_PREFIX) :]
    if not name or len(name) > METADATA_MAX_KEY:
        raise ValidationFailed(
            f"A metadata key has 1 to {METADATA_MAX_KEY} characters (`metadata.<key>`).",
            param=param,
            code="invalid_metadata_key",
        )
    return name


def usage_group_by(params: QueryDict) -> tuple[list[str], tuple[str, ...]]:
    """The plain groups (model, key, user) in order, and the metadata keys to group by."""
    groups: list[str] = []
    tags: list[str] = []
    for raw in params.getlist("group_by"):
        for item in raw.split(","):
            name = {"api_key_id": "key", "end_user": "user"}.get(item.strip(), item.strip())
            if name.startswith(TAG_PREFIX):
                tag = _tag_name(name, "group_by")
                if tag not in tags:
                    tags.append(tag)
                continue
            if name not in GROUPS:
                raise ValidationFailed(
                    f"group_by must be model, key, user or metadata.<key>, not {item.strip()!r}.",
                    param="group_by",
                    code="invalid_group_by",
                )
            if name not in groups:
                groups.append(name)
    if len(tags) > METADATA_MAX_PAIRS:
        raise ValidationFailed(
            f"group_by takes at most {METADATA_MAX_PAIRS} metadata keys.", param="group_by", code="too_many_values"
        )
    return groups, tuple(tags)


def usage_users(params: QueryDict) -> tuple[str, ...] | None:
    if "users" not in params:
        return None
    values = [item for raw in params.getlist("users") for item in raw.split(",")]
    if not values or any(not v or len(v) > END_USER_MAX for v in values):
        raise ValidationFailed(
            f"users must list end-user ids (1 to {END_USER_MAX} characters each), comma-separated.",
            param="users",
            code="invalid_users",
        )
    if len(values) > MAX_USERS:
        raise ValidationFailed(f"At most {MAX_USERS} users per request.", param="users", code="too_many_values")
    return tuple(dict.fromkeys(values))


def usage_tags(params: QueryDict) -> dict[str, str]:
    tags: dict[str, str] = {}
    for param in params:
        if not param.startswith(TAG_PREFIX):
            continue
        name = _tag_name(param, param)
        values = params.getlist(param)
        if len(values) != 1:
            raise ValidationFailed(f"Give {param} once.", param=param, code="repeated_parameter")
        if len(values[0]) > METADATA_MAX_VALUE:
            raise ValidationFailed(
                f"A metadata value has at most {METADATA_MAX_VALUE} characters.", param=param, code="invalid_value"
            )
        tags[name] = values[0]
    if len(tags) > METADATA_MAX_PAIRS:
        raise ValidationFailed(
            f"At most {METADATA_MAX_PAIRS} metadata filters per request.", param="metadata", code="too_many_values"
        )
    return tags


def usage_attribution(params: QueryDict) -> tuple[list[str], AttributionQuery]:
    """The plain groups and the attribution query of a usage request; 400 naming a bad parameter."""
    groups, group_tags = usage_group_by(params)
    query = AttributionQuery(
        group_user="user" in groups, group_tags=group_tags, users=usage_users(params), tags=usage_tags(params)
    )
    return groups, query
