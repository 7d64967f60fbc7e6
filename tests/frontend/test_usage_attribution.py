"""The usage page grouped by end user or metadata tag and filtered by them: table, chart, CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tenants.permissions import Role
from tests.factories import journal_record, ledger_add
from tests.frontend.conftest import World, client_for, this_month_moment


def _attributed(world: World) -> None:
    at = this_month_moment()

    def record(prompt: int, user: str, tags: dict[str, str]) -> dict[str, Any]:
        return {**journal_record(world.acme, prompt=prompt, completion=1, at=at), "end_user": user, "metadata": tags}

    ledger_add(
        [
            record(1_000, "alice", {"team": "search"}),
            record(2_000, "bob", {"team": "search"}),
            record(4_000, "alice", {"team": "ads"}),
            {**journal_record(world.globex, prompt=50_000, completion=1, at=at), "end_user": "alice"},
        ]
    )


def _params(**extra: str) -> dict[str, str]:
    today = timezone.now().date()
    return {"start": (today - timedelta(days=2)).isoformat(), "end": today.isoformat(), **extra}


def _by_group(page: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in page.context["rows"]:
        totals[row.group] = totals.get(row.group, 0) + row.input_tokens
    return totals


def test_usage_page_groups_by_end_user_and_tag(world: World) -> None:
    _attributed(world)
    client = client_for(world.users[Role.VIEWER])
    page = client.get("/t/acme/usage/", _params(group="user"))
    assert page.status_code == 200
    # The world's own unattributed request of today (300 tokens) is its own group.
    assert _by_group(page) == {"alice": 5_000, "bob": 2_000, "(no end user)": 300}
    html = page.content.decode()
    table = html.split('id="usage-table"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="col">End user</th>' in table and "<td>alice</td>" in table and "<td>bob</td>" in table
    assert 'name="end_user"' in html and 'name="tag"' in html and 'name="group"' in html

    by_team = client.get("/t/acme/usage/", _params(group="tag", group_tag="team"))
    assert _by_group(by_team) == {"search": 3_000, "ads": 4_000, "(untagged)": 300}
    assert "Tag metadata.team" in by_team.content.decode()

    search = client.get("/t/acme/usage/", _params(group="user", tag="team=search"))
    assert _by_group(search) == {"alice": 1_000, "bob": 2_000}
    assert sum(search.context["chart"]["data"]["datasets"][0]["data"]) == 3_000  # the chart follows the filter
    alice = client.get("/t/acme/usage/", _params(end_user="alice", group="tag", group_tag="team"))
    assert _by_group(alice) == {"search": 1_000, "ads": 4_000}  # never globex's alice

    download = client.get("/t/acme/usage/", _params(group="user", tag="team=search", format="csv"))
    rows = list(csv.DictReader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert {r["end_user"]: int(r["input_tokens"]) for r in rows} == {"alice": 1_000, "bob": 2_000}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tag": "team"}, "tag"),
        ({"tag": "=search"}, "tag"),
        ({"tag": "k" * 65 + "=v"}, "tag"),
        ({"group": "tag"}, "group_tag"),
        ({"group": "region"}, "group"),
        ({"end_user": "u" * 257}, "end_user"),
    ],
)
def test_usage_page_refuses_malformed_attribution_filters(world: World, params: dict[str, str], field: str) -> None:
    page = client_for(world.users[Role.OWNER]).get("/t/acme/usage/", _params(**params))
    assert page.status_code == 400
    assert field in page.context["form"].errors


def test_usage_page_attribution_needs_membership(world: World) -> None:
    _attributed(world)
    assert client_for(world.outsider).get("/t/acme/usage/", _params(group="user")).status_code == 404
    assert client_for(None).get("/t/acme/usage/", _params(group="user")).status_code in (302, 401)
