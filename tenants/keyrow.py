"""A key's row, its tenant's and the tenant's limits in one query, without the ORM's per-query work.

Key authentication's cold path runs this for every key a process has not seen. Compiling the
equivalent queryset (`select_related("tenant", "tenant__limits")`) costs several times the query's
own round trip, so the SQL and each column's converters are built once per process (and per
database vendor) and reused; the rows become the same model instances the ORM would build
(`Model.from_db`), with the relations cached, so callers see no difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Field, Model

from tenants.models import APIKey, Tenant, TenantLimits

_Converter = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    columns: tuple[tuple[type[Model], int, tuple[str, ...]], ...]  # model, first column, its fields' attnames
    converters: tuple[tuple[int, tuple[_Converter, ...], Any], ...]  # column, converters, expression


_plans: dict[str, _Plan] = {}


def _plan(alias: str) -> _Plan:
    connection = connections[alias]
    plan = _plans.get(connection.vendor)
    if plan is not None:
        return plan
    quote = connection.ops.quote_name
    parts: list[tuple[type[Model], str]] = [(APIKey, "k"), (Tenant, "t"), (TenantLimits, "l")]
    selected: list[str] = []
    columns: list[tuple[type[Model], int, tuple[str, ...]]] = []
    converters: list[tuple[int, tuple[_Converter, ...], Any]] = []
    for model, table_alias in parts:
        fields: list[Field[Any, Any]] = list(model._meta.concrete_fields)
        columns.append((model, len(selected), tuple(field.attname for field in fields)))
        for field in fields:
            expression = field.get_col(table_alias)
            found = tuple(connection.ops.get_db_converters(expression) + expression.get_db_converters(connection))
            if found:
                converters.append((len(selected), found, expression))
            selected.append(f"{table_alias}.{quote(str(field.column))}")
    limits_fk = TenantLimits._meta.get_field("tenant").column  # type: ignore[union-attr]
    key_fk = APIKey._meta.get_field("tenant").column  # type: ignore[union-attr]
    sql = (
        f"SELECT {', '.join(selected)} FROM {quote(APIKey._meta.db_table)} k "  # noqa: S608 - names are ours
        f"INNER JOIN {quote(Tenant._meta.db_table)} t ON t.{quote('id')} = k.{quote(key_fk)} "
        f"LEFT OUTER JOIN {quote(TenantLimits._meta.db_table)} l ON l.{quote(limits_fk)} = t.{quote('id')} "
        f"WHERE k.{quote('digest')} = %s LIMIT 1"
    )
    plan = _Plan(sql, tuple(columns), tuple(converters))
    _plans[connection.vendor] = plan
    return plan


def key_row_by_digest(digest: str, alias: str = "default") -> APIKey | None:
    """The key with this digest, its `tenant` and the tenant's `limits` loaded (one query), or None."""
    plan = _plan(alias)
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(plan.sql, [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, found, expression in plan.converters:
        for convert in found:
            values[index] = convert(values[index], expression, connection)
    (key_model, k0, k_names), (tenant_model, t0, t_names), (limits_model, l0, l_names) = plan.columns
    key = key_model.from_db(alias, k_names, values[k0 : k0 + len(k_names)])
    tenant = tenant_model.from_db(alias, t_names, values[t0 : t0 + len(t_names)])
    assert isinstance(key, APIKey) and isinstance(tenant, Tenant)
    key.tenant = tenant
    limits_values = values[l0 : l0 + len(l_names)]
    pk_name = TenantLimits._meta.pk.attname  # type: ignore[union-attr]
    has_limits = limits_values[l_names.index(pk_name)] is not None
    limits = limits_model.from_db(alias, l_names, limits_values) if has_limits else None
    Tenant.limits.related.set_cached_value(tenant, limits)  # None: `tenant.limits` raises DoesNotExist
    return key
