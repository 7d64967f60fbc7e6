"""Usage is keyed on the attempt's own id; the client's id is kept beside it for searching.

Rows written before had one id (the client's): it becomes their client id too.
"""

from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def client_ids_fill(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    usage_record = apps.get_model("billing", "UsageRecord")
    usage_record.objects.using(schema_editor.connection.alias).filter(client_request_id="").update(
        client_request_id=models.F("request_id")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_billing_run"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="client_request_id",
            field=models.CharField(blank=True, default="", max_length=128),
        ),
        migrations.RunPython(client_ids_fill, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(fields=["client_request_id"], name="usage_client_request_id"),
        ),
    ]
