from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

# jsonb_path_ops: smaller than the default GIN operator class and it answers `@>`, the one
# operator the usage API's tag filters use. Partial, like the end-user index.
_GIN_CREATE = (
    "CREATE INDEX IF NOT EXISTS usage_metadata_gin ON billing_usagerecord "
    "USING gin (metadata jsonb_path_ops) WHERE metadata <> '{}'::jsonb"
)
_GIN_DROP = "DROP INDEX IF EXISTS usage_metadata_gin"


def _gin_create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_GIN_CREATE)


def _gin_drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_GIN_DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_billing_run_failed"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(("end_user", ""), _negated=True),
                fields=["tenant", "end_user", "started_at"],
                name="usage_tenant_end_user",
            ),
        ),
        migrations.RunPython(_gin_create, _gin_drop),
    ]
