"""Kubernetes manifests: every overlay renders, validates against the API schemas, and wires up."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.platform import helpers, kustomize
from tests.platform.helpers import K8S, OVERLAYS, ROOT, find, rendered

# The oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Images the platform runs as they are published (pinned like ours).
THIRD_PARTY_IMAGES = {"edoburu/pgbouncer", "otel/opentelemetry-collector-contrib"}
PGBOUNCER_SECRET_TEMPLATE = K8S / "base" / "pgbouncer-secret.example.yaml"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"}


def _workloads(manifests: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in _pod_spec(workload)["containers"] if c["name"] == name]
    return container


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_manifest_validates(overlay: str, version: str) -> None:
    manifests = rendered(overlay)
    assert len(manifests) >= 10
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_validation_catches_a_bad_manifest() -> None:
    """The validator is strict: an unknown field or a wrong type is an error, not a warning."""
    web = yaml.safe_load(yaml.safe_dump(find(rendered("base"), "Deployment", "mmorch-web")))
    _pod_spec(web)["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, K8S_VERSIONS[-1], strict=True)
    web = yaml.safe_load(yaml.safe_dump(find(rendered("base"), "Deployment", "mmorch-web")))
    web["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, K8S_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", [*sorted(OVERLAYS), "monitoring"])
def test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    directory = OVERLAYS.get(overlay, K8S / overlay)
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True)
    theirs = {(m["kind"], m["metadata"]["name"]): m for m in yaml.safe_load_all(result.stdout) if m}
    ours = {(m["kind"], m["metadata"]["name"]): m for m in kustomize.build(directory)}
    assert ours.keys() == theirs.keys()
    for key, manifest in ours.items():
        assert manifest == theirs[key], key


def test_renderer_refuses_fields_it_does_not_implement(tmp_path: Any) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(kustomize.KustomizeError, match="commonLabels"):
        kustomize.build(tmp_path)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_platform_objects_are_all_there(overlay: str) -> None:
    manifests = rendered(overlay)
    for kind, name in [
        ("Namespace", "mmorch"),
        ("ConfigMap", "mmorch-config"),
        ("Deployment", "mmorch-web"),
        ("Service", "mmorch-web"),
        ("HorizontalPodAutoscaler", "mmorch-web"),
        ("PodDisruptionBudget", "mmorch-web"),
        ("Deployment", "mmorch-worker"),
        ("Deployment", "mmorch-beat"),
        ("Job", "mmorch-migrate"),
        ("Deployment", "mmorch-pgbouncer"),
        ("Service", "mmorch-pgbouncer"),
        ("StatefulSet", "mmorch-inference"),
        ("Service", "mmorch-inference"),
        ("Ingress", "mmorch"),
    ]:
        find(manifests, kind, name)
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "mmorch", manifest["metadata"]["name"]
    assert "Secret" not in {m["kind"] for m in manifests}, "secrets are created out of band, never rendered"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_selectors_and_references_resolve(overlay: str) -> None:
    manifests = rendered(overlay)
    pods = {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"] for m in _workloads(manifests)}

    def selects_some_pod(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pods.values())

    for manifest in manifests:
        kind, spec = manifest["kind"], manifest.get("spec", {})
        if kind in {"Deployment", "StatefulSet"}:
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        if kind == "Service":
            assert selects_some_pod(spec["selector"]), manifest["metadata"]["name"]
        if kind == "PodDisruptionBudget":
            assert selects_some_pod(spec["selector"]["matchLabels"]), manifest["metadata"]["name"]
        if kind == "HorizontalPodAutoscaler":
            target = spec["scaleTargetRef"]
            find(manifests, target["kind"], target["name"])
            assert spec["minReplicas"] <= spec["maxReplicas"]
        if kind == "Ingress":
            for rule in spec["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = find(manifests, "Service", backend["name"])
                    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        if kind == "StatefulSet":
            find(manifests, "Service", spec["serviceName"])

    configmaps = {m["metadata"]["name"] for m in manifests if m["kind"] == "ConfigMap"}
    claims = {m["metadata"]["name"] for m in manifests if m["kind"] == "PersistentVolumeClaim"}
    secret_name = yaml.safe_load(helpers.SECRET_TEMPLATE.read_text())["metadata"]["name"]
    bouncer_secret = yaml.safe_load(PGBOUNCER_SECRET_TEMPLATE.read_text())["metadata"]["name"]
    for workload in _workloads(manifests):
        pod = _pod_spec(workload)
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in kustomize.pod_containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (workload["metadata"]["name"], mount["name"])
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    expected = bouncer_secret if workload["metadata"]["name"] == "mmorch-pgbouncer" else secret_name
                    assert source["secretRef"]["name"] == expected
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret_name
                    assert ref["key"] in helpers.secret_template_keys(secret_name)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_pods_run_unprivileged_with_pinned_images(overlay: str) -> None:
    """(The base names the abstract image mmorch/inference; only the overlays are deployable.)"""
    for workload in _workloads(rendered(overlay)):
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in kustomize.pod_containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            name, tag, digest = kustomize.split_image(container["image"])
            assert name.startswith("mmorch/") or name in THIRD_PARTY_IMAGES, name
            assert (tag and tag != "latest") or digest, container["image"]


def test_secret_template_holds_no_values_and_is_never_applied() -> None:
    template = yaml.safe_load(helpers.SECRET_TEMPLATE.read_text())
    kubernetes_validate.validate(template, K8S_VERSIONS[-1], strict=True)
    assert template["stringData"], "the template lists the keys"
    assert all(value == "" for value in template["stringData"].values())
    assert "data" not in template
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not any(entry.endswith(helpers.SECRET_TEMPLATE.name) for entry in listed)


def test_beat_is_a_single_replica_that_never_overlaps() -> None:
    for overlay in OVERLAYS:
        beat = find(rendered(overlay), "Deployment", "mmorch-beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"]["type"] == "Recreate"
        assert "HorizontalPodAutoscaler" not in {
            m["kind"]
            for m in rendered(overlay)
            if m.get("spec", {}).get("scaleTargetRef", {}).get("name") == "mmorch-beat"
        }


def test_migration_job_runs_migrate_once() -> None:
    job = find(rendered("prod"), "Job", "mmorch-migrate")
    pod = _pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["args"] == ["migrate"]
    assert job["spec"]["backoffLimit"] >= 1


def _drain_timeout(container: dict[str, Any]) -> float:
    from inference.config import NodeConfig

    for item in container["env"]:
        if item["name"] == "INFERENCE_DRAIN_TIMEOUT_S":
            return float(item["value"])
    return float(NodeConfig.model_fields["drain_timeout_s"].default)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_inference_probes_and_graceful_drain(overlay: str) -> None:
    node = find(rendered(overlay), "StatefulSet", "mmorch-inference")
    container = _container(node, "inference")
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = _pod_spec(node)["terminationGracePeriodSeconds"]
    assert grace > pre_stop + _drain_timeout(container), "the kubelet would kill a draining node"
    # The journal survives restarts: it is on the pod's own claim.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    journal_path = next(e["value"] for e in container["env"] if e["name"] == "INFERENCE_JOURNAL_PATH")
    assert journal_path.startswith(mounts["journal"] + "/")
    assert "journal" in {t["metadata"]["name"] for t in node["spec"]["volumeClaimTemplates"]}


def test_dev_runs_cpu_inference_with_the_demo_model() -> None:
    node = find(rendered("dev"), "StatefulSet", "mmorch-inference")
    pod = _pod_spec(node)
    container = _container(node, "inference")
    assert container["image"].startswith("mmorch/inference-cpu:")
    assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["INFERENCE_ENGINE"] == "torch"
    assert env["INFERENCE_DEVICE"] == "cpu"
    # A core is left to the event loop; the pod sees the host's core count, so this is explicit.
    assert 1 <= int(env["INFERENCE_THREADS"]) < int(container["resources"]["limits"]["cpu"])
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["python", "-m", "inference.demo_model"]
    assert init["command"][3] == env["INFERENCE_MODEL_PATH"]
    assert init["image"] == container["image"]


def test_prod_runs_gpu_inference_on_the_gpu_pool() -> None:
    node = find(rendered("prod"), "StatefulSet", "mmorch-inference")
    pod = _pod_spec(node)
    container = _container(node, "inference")
    assert container["image"].startswith("mmorch/inference-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["INFERENCE_ENGINE"] == "vllm"
    assert "initContainers" not in pod, "production models are placed by an operator, not built"
    # Every env var is set once, even after the overlay's patch merged into the base list.
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))


def test_web_survives_disruptions_and_scales() -> None:
    manifests = rendered("prod")
    hpa = find(manifests, "HorizontalPodAutoscaler", "mmorch-web")
    pdb = find(manifests, "PodDisruptionBudget", "mmorch-web")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    web = find(manifests, "Deployment", "mmorch-web")
    assert "replicas" not in web["spec"], "the autoscaler owns the replica count"
    container = _container(web, "web")
    assert container["args"][0] == "web"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    hosts = next(e["value"] for e in container["env"] if e["name"] == "DJANGO_ALLOWED_HOSTS")
    assert "$(POD_IP)" in hosts, "probes and Prometheus reach the pod by IP"
    ingress_host = find(manifests, "Ingress", "mmorch")["spec"]["rules"][0]["host"]
    assert hosts.split(",")[0] == ingress_host


def test_monitoring_kustomization_matches_the_platform_rules() -> None:
    manifests = kustomize.build(K8S / "monitoring")
    rule = find(tuple(manifests), "PrometheusRule", "mmorch")
    assert rule["spec"] == {"groups": helpers.rule_groups()}, (
        "run platform/prometheus/sync_k8s_rules.py after changing the alert rules"
    )
    services = {m["metadata"]["name"]: m for m in rendered("prod") if m["kind"] == "Service"}
    jobs = set()
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        selected = [
            s
            for s in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert selected, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            assert endpoint["port"] in {p["name"] for s in selected for p in s["spec"]["ports"]}
            jobs |= {r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"}
    prometheus = yaml.safe_load((helpers.PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert jobs == {c["job_name"] for c in prometheus["scrape_configs"]} - {"prometheus"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_process_logs_json_and_sends_spans_to_the_collector(overlay: str) -> None:
    manifests = rendered(overlay)
    config = find(manifests, "ConfigMap", "mmorch-config")["data"]
    service = find(manifests, "Service", "mmorch-otel-collector")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-http")
    endpoint = f"http://mmorch-otel-collector:{port}"
    assert config["MMORCH_LOG_FORMAT"] == "json" and config["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    inference = find(manifests, "StatefulSet", "mmorch-inference")
    env = {e["name"]: e.get("value") for e in _container(inference, "inference")["env"]}
    assert env["MMORCH_LOG_FORMAT"] == "json" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    # The collector runs the repository's configuration.
    collector_config = find(manifests, "ConfigMap", "mmorch-otel-collector")["data"]["config.yaml"]
    assert yaml.safe_load(collector_config) == yaml.safe_load((ROOT / "platform/otel/collector.yaml").read_text())


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_control_plane_reaches_postgres_through_pgbouncer(overlay: str) -> None:
    manifests = rendered(overlay)
    bouncer = find(manifests, "Deployment", "mmorch-pgbouncer")
    (container,) = kustomize.pod_containers(bouncer)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["POOL_MODE"] == "transaction"
    service = find(manifests, "Service", "mmorch-pgbouncer")
    assert service["spec"]["ports"][0]["port"] == int(env["LISTEN_PORT"])
    # What transaction pooling needs from Django, for every pod that reads the config map.
    config = find(manifests, "ConfigMap", "mmorch-config")["data"]
    assert config["DATABASE_PGBOUNCER"] == "true"
    assert "DATABASE_POOL" not in config
    template = yaml.safe_load(helpers.SECRET_TEMPLATE.read_text())
    kubernetes_validate.validate(template, K8S_VERSIONS[-1], strict=True)
    bouncer_template = yaml.safe_load(PGBOUNCER_SECRET_TEMPLATE.read_text())
    kubernetes_validate.validate(bouncer_template, K8S_VERSIONS[-1], strict=True)
    assert set(bouncer_template["stringData"]) >= {"DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD"}
    assert not any(bouncer_template["stringData"].values()), "the template holds no values"
