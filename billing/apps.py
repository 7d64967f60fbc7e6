from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing.metrics import BillingRunsCollector, IngestLagCollector
        from core.observability import scrape_collector_register

        scrape_collector_register(IngestLagCollector())
        scrape_collector_register(BillingRunsCollector())
