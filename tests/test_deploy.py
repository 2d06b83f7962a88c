"""deploy/ is consistent with the code: alert rules pass promtool (check + unit tests), the dashboard and the
alerts query only metrics of services/metrics.py, the manifests parse, kustomize lists every file, containers use
images built here (or NGC Triton / Redis), ports the services listen on, `whaleid` sub-commands that parse, and
WHALEID_* settings that exist; consumer replicas never exceed their topic's partitions."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from services import metrics, topics
from services.cli.main import build_parser
from services.service_ports import default_port
from services.settings import Settings, describe_settings, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
EXTERNAL_IMAGES = ("nvcr.io/nvidia/tritonserver:", "redis:")  # NGC Triton, Redis (Strimzi runs Kafka's own)
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make install installs it)")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_manifests() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _docs(DEPLOY / name)]


def _pod_specs():
    """(workload name, pod spec, pod template metadata) of every Deployment/StatefulSet/CronJob."""
    for doc in _all_manifests():
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], spec["template"]["spec"], spec["template"].get("metadata", {})
        elif doc["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            yield doc["metadata"]["name"], template["spec"], template.get("metadata", {})


def _containers():
    for name, pod, meta in _pod_specs():
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield name, container, meta


def _metric_names(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bwhaleid_[a-z0-9_]+", expr)}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "whaleid.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]]


# --------------------------------------------------------------------------- Prometheus rules and config
@needs_promtool
def test_promtool_checks_and_unit_tests_the_alert_rules():
    check = subprocess.run([PROMTOOL, "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True,
                          text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


@needs_promtool
def test_promtool_checks_the_scrape_config(tmp_path):
    """Debian's promtool lacks Kubernetes discovery: the pod discovery is swapped for a static target, so the
    relabelling, globals and the rule file are still checked by promtool itself."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["whaleid"]}}]
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["10.0.0.1:9402"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    check = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "9 rules found" in check.stdout, check.stdout + check.stderr


def test_alerts_cover_down_dead_letters_latency_and_stale_index():
    exprs = {r["alert"]: r["expr"] for r in _alert_rules()}
    assert "== 0" in exprs["WhaleIdServiceDown"] and exprs["WhaleIdServiceDown"].startswith("up")
    assert "whaleid_dead_letters_total" in exprs["WhaleIdDeadLettersRising"]
    assert "whaleid_end_to_end_latency_seconds_bucket" in exprs["WhaleIdEndToEndLatencyHigh"]
    assert exprs["WhaleIdIndexStale"] == ("time() - max(whaleid_reindex_last_success_timestamp_seconds) "
                                          "> 2 * 86400")


# --------------------------------------------------------------------------- metric names
def test_dashboard_and_alerts_query_only_exported_metrics_and_show_all_of_them():
    registered = {family.name for family in REGISTRY.collect() if family.name.startswith("whaleid_")}
    # METRIC_NAMES is exactly what services/metrics.py registers (counters' families drop "_total")
    assert {name.removesuffix("_total") for name in metrics.METRIC_NAMES} == registered
    dashboard = set().union(*map(_metric_names, _dashboard_exprs()))
    alerts = set().union(*(_metric_names(r["expr"]) for r in _alert_rules()))
    assert dashboard | alerts <= set(metrics.METRIC_NAMES), (dashboard | alerts) - set(metrics.METRIC_NAMES)
    assert dashboard == set(metrics.METRIC_NAMES), set(metrics.METRIC_NAMES) - dashboard
    assert _metric_names("rate(whaleid_step_latency_seconds_bucket[5m])") == {"whaleid_step_latency_seconds"}


def test_dashboard_is_grafana_json_with_unique_panel_ids():
    dashboard = json.loads((DEPLOY / "grafana" / "whaleid.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


# --------------------------------------------------------------------------- manifests
def test_kustomization_lists_every_manifest_and_generated_file():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = {DEPLOY / name for name in kustomization["resources"]}
    assert listed == set((DEPLOY / "k8s").glob("*.yaml"))
    for generator in kustomization["configMapGenerator"]:
        assert all((DEPLOY / f).is_file() for f in generator["files"])
    for overlay in (DEPLOY / "overlays").iterdir():
        data = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert (overlay / data["resources"][0]).resolve() == DEPLOY.resolve()
    kinds = {d["kind"] for d in _all_manifests()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "StatefulSet", "Deployment", "CronJob", "Service",
            "ConfigMap", "HorizontalPodAutoscaler"} <= kinds


def test_containers_use_images_built_here_or_the_allowed_external_ones():
    built = set()
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        built.update(re.findall(r"^# image: (\S+)$", text, flags=re.M))
        for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
            assert (DEPLOY.parent / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
    assert built == {"whaleid", "whaleid-triton"}
    for workload, container, _ in _containers():
        image = container["image"]
        assert image in built or image.startswith(EXTERNAL_IMAGES), f"{workload}: image {image}"
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert {i["name"] for i in kustomization["images"]} <= built


def test_the_triton_image_has_the_pillow_the_repository_is_built_with():
    """The python-backend models decode and resize with Pillow: NGC's image lacks it, the derived image installs
    the version pyproject.toml pins (the one `model-repo build` records)."""
    pinned = re.search(r'"pillow==([^"]+)"', (DEPLOY.parent / "pyproject.toml").read_text()).group(1)
    text = (DEPLOY / "docker" / "triton.Dockerfile").read_text()
    assert re.search(r"^ARG PILLOW_VERSION=(\S+)$", text, flags=re.M).group(1) == pinned
    assert re.search(r"^ARG TRITON_IMAGE=(\S+)$", text, flags=re.M).group(1).startswith(EXTERNAL_IMAGES[0])
    triton = [c for w, c, _ in _containers() if w == "triton" and c["name"] == "triton"]
    assert triton and triton[0]["image"] == "whaleid-triton"


def _whaleid_containers():
    for workload, container, meta in _containers():
        if container["image"] == "whaleid":
            yield workload, container, meta


def test_whaleid_containers_run_existing_commands_on_the_services_ports():
    parser = build_parser()
    defaults = Settings()
    served = set()
    for workload, container, meta in _whaleid_containers():
        try:
            args = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{workload}: `whaleid {' '.join(container['args'])}` is not a valid command")
        assert callable(args.func)
        if args.command != "serve":
            continue
        served.add(args.service)
        expected = (defaults.gateway_port if args.service == "gateway"
                    else default_port(defaults.metrics_port_base, args.service, 0))
        ports = [p["containerPort"] for p in container.get("ports", [])]
        assert ports == [expected], f"{workload}: ports {ports}, the service listens on {expected}"
        assert meta["annotations"]["prometheus.io/port"] == str(expected), workload
    assert served == {"gateway", "bridge", "worker", "matcher", "reconciler", "webhooks"}


def test_environment_names_settings_that_exist_and_load():
    known = {env for _, env, _ in describe_settings()}
    settings_docs = _docs(DEPLOY / "k8s" / "settings.yaml")
    environ = {}
    for doc in settings_docs:
        values = doc.get("data") or doc.get("stringData") or {}
        unknown = sorted(set(values) - known)
        assert not unknown, f"{doc['metadata']['name']}: unknown settings {unknown}"
        environ.update({k: str(v) for k, v in values.items()})
    refs = {"whaleid-settings", "whaleid-secrets"}
    for workload, container, _ in _whaleid_containers():
        sources = {next(iter(s.values()))["name"] for s in container.get("envFrom", [])}
        assert sources == refs, f"{workload} takes its settings from {sources}"
        for item in container.get("env", []):
            assert not item["name"].startswith("WHALEID_") or item["name"] in known, item["name"]
    dockerfile_env = re.findall(r"\b(WHALEID_[A-Z0-9_]+)=", (DEPLOY / "docker" / "whaleid.Dockerfile").read_text())
    assert set(dockerfile_env) <= known
    settings = load_settings(environ=environ)  # every value parses as its setting's type
    assert settings.profile == "production" and settings.metrics_host == "0.0.0.0"
    assert dataclasses.replace(settings).kafka_bootstrap.endswith(":9092")


def test_topics_and_consumer_replicas_within_partitions():
    partitions = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in _docs(DEPLOY / "k8s" / "topics.yaml")}
    assert set(partitions) == set(topics.ALL_TOPICS)
    consumers = {}
    for doc in _all_manifests():
        topic = doc["metadata"].get("annotations", {}).get("whaleid.io/consumes-topic")
        if topic is None:
            continue
        if doc["kind"] == "Deployment":
            consumers[doc["metadata"]["name"]] = topic
            assert doc["spec"]["replicas"] <= partitions[topic], doc["metadata"]["name"]
        elif doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["maxReplicas"] <= partitions[topic], doc["metadata"]["name"]
    assert consumers == {"worker": topics.SIGHTINGS_UPLOADED, "matcher": topics.SIGHTINGS_EMBEDDED}
    for overlay in (DEPLOY / "overlays").iterdir():
        for item in yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("replicas", []):
            if item["name"] in consumers:
                assert item["count"] <= partitions[consumers[item["name"]]], (overlay.name, item)


def test_triton_runs_on_gpu_nodes_with_the_repository_pulled_from_s3():
    triton = next(d for d in _all_manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    pod = triton["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["model-repo", "pull", "/repository/models"]
    assert init["volumeMounts"] == [{"name": "models", "mountPath": "/repository"}]
    (server,) = pod["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/repository/models" in server["args"]
    assert {"name": "models", "mountPath": "/repository"} in server["volumeMounts"]
    assert {p["containerPort"] for p in server["ports"]} == {8000, 8001, 8002}
    settings = {k: v for d in _docs(DEPLOY / "k8s" / "settings.yaml") for k, v in (d.get("data") or {}).items()}
    assert settings["WHALEID_TRITON_GRPC_URL"] == "triton:8001"


def test_reindex_cronjob_is_nightly_and_never_overlaps():
    cron = next(d for d in _all_manifests() if d["kind"] == "CronJob")
    assert re.fullmatch(r"\d+ \d+ \* \* \*", cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "reindex"
