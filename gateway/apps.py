from django.apps import AppConfig


def _ready_node_check() -> tuple[bool, str]:
    from gateway.selectors import node_ready_exists

    if node_ready_exists():
        return True, "ok"
    return False, "no inference node is up"


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.observability import readiness_check_register

        readiness_check_register("inference_nodes", _ready_node_check)
