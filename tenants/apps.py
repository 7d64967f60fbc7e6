from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the admin-key security scheme with drf-spectacular.
        from tenants.api import schema  # noqa: F401
