from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the admin-key security scheme with drf-spectacular.
        # Pool metrics: each process samples its own PostgreSQL pool once it has opened it.
        from django.db.backends.signals import connection_created

        from core.dbpool import db_pool_sampler_start
        from tenants.api import schema  # noqa: F401

        connection_created.connect(db_pool_sampler_start, dispatch_uid="core.dbpool.sampler")
