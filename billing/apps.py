from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing.metrics import BillingRunsCollector, IngestLagCollector, SloTargetsCollector
        from billing.services.spend import month_to_date_baselines
        from core.observability import scrape_collector_register
        from gateway.baselines import baseline_source_register

        baseline_source_register(month_to_date_baselines)
        scrape_collector_register(IngestLagCollector())
        scrape_collector_register(BillingRunsCollector())
        scrape_collector_register(SloTargetsCollector())
