"""deploy/ is consistent with the code: alert rules pass promtool (check + unit tests), the dashboard and the
alerts query only metrics of services/core/metrics.py, the manifests parse, kustomize lists every file, containers use
images built here (or NGC Triton / Redis), ports the services listen on, `whaleid` sub-commands that parse, and
WHALEID_* settings that exist; consumer replicas never exceed their topic's partitions.

And the manifests are checked (issue 22): every manifest and every overlay's rendered output passes Kubernetes'
JSON schemas (kubernetes-validate, strict), checkov finds nothing that is not waived in place with a reason, and the
hardening holds: resources and security contexts on every container, NetworkPolicies (default deny + the flows the
chain needs, evaluated here), Redis with a password, maxmemory and noeviction, Kafka over TLS with SCRAM."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from services.cli.main import build_parser
from services.core import metrics, topics
from services.core.service_ports import default_port
from services.core.settings import describe_settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "k8s"  # the kustomize base (overlays may not live inside it: kustomize calls that a cycle)
OVERLAYS = sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
PROMETHEUS = DEPLOY / "prometheus"
EXTERNAL_IMAGES = ("nvcr.io/nvidia/tritonserver:", "redis:")  # NGC Triton, Redis (Strimzi runs Kafka's own)
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make install installs it)")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _base_files() -> list[Path]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / name for name in kustomization["resources"] if (BASE / name).is_file()]


def _all_manifests() -> list[dict]:
    return [doc for path in _base_files() for doc in _docs(path)]


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
    # METRIC_NAMES is exactly what services/core/metrics.py registers (counters' families drop "_total")
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
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(_base_files()) == set(BASE.glob("*.yaml")) - {BASE / "kustomization.yaml"}
    directories = [BASE / name for name in kustomization["resources"] if (BASE / name).is_dir()]
    assert {d.resolve() for d in directories} == {PROMETHEUS.resolve(), (DEPLOY / "grafana").resolve()}
    for directory in directories:
        for generator in yaml.safe_load((directory / "kustomization.yaml").read_text())["configMapGenerator"]:
            assert all((directory / f).is_file() for f in generator["files"])  # kustomize loads no file above it
    assert {o.name for o in OVERLAYS} == {"production", "staging"}
    for overlay in OVERLAYS:
        data = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert (overlay / data["resources"][0]).resolve() == BASE.resolve()
    for root in [BASE, *OVERLAYS]:  # `kubectl apply -k` refuses a root whose resource directory contains it
        for name in yaml.safe_load((root / "kustomization.yaml").read_text())["resources"]:
            if (root / name).is_dir():
                assert (root / name).resolve() not in root.resolve().parents, f"{root}: {name} is a cycle"
    assert not (DEPLOY / "kustomization.yaml").exists()
    kinds = {d["kind"] for d in _all_manifests()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "StatefulSet", "Deployment", "CronJob", "Service",
            "ConfigMap", "HorizontalPodAutoscaler", "NetworkPolicy", "Namespace", "Secret"} <= kinds


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
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
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
    defaults = _deployed_settings()
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
        metrics = (defaults.gateway_metrics_port if args.service == "gateway"
                   else default_port(defaults.metrics_port_base, args.service, 0))
        expected = [defaults.gateway_port, metrics] if args.service == "gateway" else [metrics]
        ports = [p["containerPort"] for p in container.get("ports", [])]
        assert ports == expected, f"{workload}: ports {ports}, the service listens on {expected}"
        assert meta["annotations"]["prometheus.io/port"] == str(metrics), workload
    assert defaults.gateway_metrics_port == default_port(defaults.metrics_port_base, "gateway", 0)
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
    assert dataclasses.replace(settings).kafka_bootstrap.endswith(":9093")
    assert settings.faust_web_host == "127.0.0.1" and settings.gateway_metrics_port


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
    assert {"name": "models", "mountPath": "/repository"} in init["volumeMounts"]
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


# --------------------------------------------------------------------------- rendering the overlays
def _deployed_settings(password: str = "a-redis-password"):
    """The settings a whaleid container gets from whaleid-settings + whaleid-secrets (+ its own env)."""
    environ = {}
    for doc in _docs(BASE / "settings.yaml"):
        environ.update({k: str(v) for k, v in (doc.get("data") or doc.get("stringData") or {}).items()})
    environ.update(WHALEID_REDIS_PASSWORD=password, WHALEID_KAFKA_PASSWORD="from-strimzi")
    return load_settings(environ=environ)


CLUSTER_SCOPED = {"Namespace"}
KUSTOMIZE = shutil.which("kustomize")
KUBECTL = shutil.which("kubectl")


def _set_image(image: str, entry: dict) -> str:
    name, digest = image.partition("@")[::2]
    name, tag = (name.rsplit(":", 1) + [""])[:2] if ":" in name.rsplit("/", 1)[-1] else (name, "")
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    tag = entry.get("newTag", tag)
    return f"{name}:{tag}" if tag else (f"{name}@{digest}" if digest else name)


def _pointer(path: str) -> list:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _json_patch(doc: dict, ops: list[dict]) -> None:
    """RFC 6902 add / replace / remove (what the overlays use); KeyError on a path that does not exist."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif op["op"] == "replace":
            if isinstance(node, list):
                node[int(last)] = copy.deepcopy(op["value"])
            else:
                node[last]  # noqa: B018 - replace needs an existing member
                node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                node[last] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"patch op {op['op']} is not rendered by this test: use add/replace/remove")


def _containers_of(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = (spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
           or spec.get("template", {}).get("spec", {}))
    return pod.get("initContainers", []) + pod.get("containers", [])


SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images",
                    "replicas", "patches"}


def render(root: Path) -> list[dict]:
    """What `kustomize build root` outputs, for the features deploy/ uses (refused otherwise), with generated
    ConfigMaps named without kustomize's content hash. Used where no kustomize/kubectl binary is installed;
    test_the_renderer_agrees_with_kustomize compares it with the real thing where one is."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(kustomization) <= SUPPORTED_FIELDS, set(kustomization) - SUPPORTED_FIELDS
    docs = []
    for name in kustomization.get("resources", []):
        path = root / name
        docs += render(path) if path.is_dir() else copy.deepcopy(_docs(path))
    for generator in kustomization.get("configMapGenerator", []):
        meta = {"name": generator["name"]}
        if generator.get("options", {}).get("labels"):
            meta["labels"] = dict(generator["options"]["labels"])
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                     "data": {Path(f).name: (root / f).read_text() for f in generator["files"]}})
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = kustomization["namespace"]
            elif doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for group in kustomization.get("labels", []):
        assert not group.get("includeSelectors") and not group.get("includeTemplates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
    for patch in kustomization.get("patches", []):
        target, matched = patch["target"], 0
        for doc in docs:
            if doc["kind"] == target.get("kind", doc["kind"]) and \
                    doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"]):
                _json_patch(doc, yaml.safe_load(patch["patch"]))
                matched += 1
        assert matched, f"{root}: patch target {target} matches nothing"
    for entry in kustomization.get("images", []):
        for doc in docs:
            for container in _containers_of(doc):
                container["image"] = _set_image(container["image"], entry)
    for entry in kustomization.get("replicas", []):
        targets = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                   and d["metadata"]["name"] == entry["name"]]
        assert targets, f"{root}: replicas for {entry['name']}, which does not exist"
        for doc in targets:
            doc["spec"]["replicas"] = entry["count"]
    return docs


def _kustomize_binary(root: Path) -> list[dict] | None:
    command = ([KUSTOMIZE, "build", str(root)] if KUSTOMIZE else [KUBECTL, "kustomize", str(root)] if KUBECTL
               else None)
    if command is None:
        return None
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr  # e.g. a base containing its overlays: "cycle detected"
    return [d for d in yaml.safe_load_all(built.stdout) if d]


GENERATED = ("whaleid-prometheus", "whaleid-grafana-dashboard")


def _without_hash(docs: list[dict]) -> list[dict]:
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap" and re.fullmatch(rf"({'|'.join(GENERATED)})-[a-z0-9]{{10}}", name):
            doc["metadata"]["name"] = name.rsplit("-", 1)[0]
    return docs


def _key(doc: dict) -> tuple:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


@pytest.mark.skipif(not (KUSTOMIZE or KUBECTL), reason="neither kustomize nor kubectl is installed")
@pytest.mark.parametrize("root", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_the_renderer_agrees_with_kustomize(root):
    real = sorted(_without_hash(_kustomize_binary(root)), key=_key)
    ours = sorted(render(root), key=_key)
    assert [_key(d) for d in ours] == [_key(d) for d in real]
    for mine, theirs in zip(ours, real, strict=True):
        assert mine == theirs, _key(mine)


def _rendered(root: Path) -> list[dict]:
    return _without_hash(_kustomize_binary(root) or render(root))


def test_overlays_change_what_they_say():
    production, staging = (_rendered(o) for o in OVERLAYS)
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in staging}
    assert by_key[("Namespace", "whaleid-staging")]
    assert {d["metadata"].get("namespace") for d in staging if d["kind"] != "Namespace"} == {"whaleid-staging"}
    assert by_key[("KafkaNodePool", "dual-role")]["spec"]["replicas"] == 1
    worker = next(d for d in production if d["kind"] == "Deployment" and d["metadata"]["name"] == "worker")
    assert worker["spec"]["replicas"] == 6
    assert _containers_of(worker)[0]["image"] == "registry.example.org/whaleid/whaleid:0.1.0"


# --------------------------------------------------------------------------- Kubernetes' JSON schemas
KUBERNETES_VERSION = "1.37.0"  # kubernetes-validate 1.37.0 (pyproject.toml [dev]) ships the schemas up to it
STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}  # CRDs: no schema in the package


def _schema_errors(docs: list[dict], where: str) -> tuple[list[str], set[str]]:
    from kubernetes_validate import utils as validate

    errors, unchecked = [], set()
    for doc in docs:
        try:
            validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except validate.SchemaNotFoundError:
            unchecked.add(f"{doc['apiVersion']}/{doc['kind']}")
        except validate.ValidationError as exc:
            errors.append(f"{where}: {doc['kind']}/{doc['metadata'].get('name')}: "
                          f"{'.'.join(map(str, exc.path))}: {exc.message}")
    return errors, unchecked


@pytest.mark.parametrize("root", [None, BASE, *OVERLAYS], ids=lambda p: "manifests" if p is None else p.name)
def test_manifests_and_rendered_overlays_pass_the_kubernetes_schemas(root):
    if root is None:
        docs = [(path.name, doc) for path in _base_files() for doc in _docs(path)]
        errors, unchecked = [], set()
        for name, doc in docs:
            found, missing = _schema_errors([doc], name)
            errors += found
            unchecked |= missing
    else:
        errors, unchecked = _schema_errors(_rendered(root), root.name)
    assert not errors, "\n".join(errors)
    assert unchecked == {f"kafka.strimzi.io/v1beta2/{kind}" for kind in STRIMZI_KINDS}  # nothing else escapes


def test_the_schema_check_catches_a_mistake():
    gateway = copy.deepcopy(next(d for d in _all_manifests() if d["kind"] == "Deployment"))
    _containers_of(gateway)[0]["resources"]["limit"] = {"cpu": "1"}  # a typo strict validation must refuse
    errors, _ = _schema_errors([gateway], "typo")
    assert errors and "limit" in errors[0]


def test_kubernetes_validate_command_line_passes_every_manifest(tmp_path):
    """The tool as a user runs it: `kubernetes-validate --strict` over the files and the rendered overlays."""
    files = [str(p) for p in _base_files()]
    for root in OVERLAYS:
        out = tmp_path / f"{root.name}.yaml"
        out.write_text(yaml.safe_dump_all(_rendered(root)))
        files.append(str(out))
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, *files]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ERROR" not in result.stdout


# --------------------------------------------------------------------------- checkov
CHECKOV_VENV = DEPLOY.parent / ".venv-tools"  # its own venv (`make install`): checkov pins boto3/packaging
CHECKOV = CHECKOV_VENV / "bin" / "checkov"


def _checkov() -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make install` installs checkov (deploy/requirements-checks.txt)")
    # as deploy/README.md runs it, without --quiet so that the JSON lists the skipped checks too
    result = subprocess.run([str(CHECKOV), "-d", "deploy", "--framework", "kubernetes", "--compact",
                             "--skip-download", "-o", "json"], cwd=DEPLOY.parent, capture_output=True, text=True,
                            timeout=600)
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["check_type"] == "kubernetes"
    return report


def _waivers() -> dict[tuple[str, str], str]:
    """(checkov resource id, check id) -> reason, from the `checkov.io/skipN: CKV_K8S_xx=reason` annotations."""
    waivers = {}
    for doc in _all_manifests():
        namespace = doc["metadata"].get("namespace", "default")
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, equals, reason = value.partition("=")
                assert equals and len(reason.strip()) >= 20, f"{doc['metadata']['name']}: {key} needs a reason"
                waivers[(f"{doc['kind']}.{namespace}.{doc['metadata']['name']}", check)] = reason.strip()
    return waivers


def test_checkov_finds_nothing_that_is_not_waived_in_place_with_a_reason():
    report = _checkov()
    summary, results = report["summary"], report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in results["failed_checks"]]
    assert summary["failed"] == 0 and not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 700
    skipped = {(c["resource"], c["check_id"]): c["check_result"].get("suppress_comment", "")
               for c in results["skipped_checks"]}
    assert summary["skipped"] == len(skipped)
    assert skipped == _waivers()  # every skip is an annotation with its reason, and every annotation is used
    assert {check for _, check in skipped} <= {"CKV_K8S_43", "CKV_K8S_14", "CKV_K8S_35", "CKV_K8S_9"}


# --------------------------------------------------------------------------- hardening
def _workloads():
    for doc in _all_manifests():
        if doc["kind"] in ("Deployment", "StatefulSet", "CronJob"):
            spec = doc["spec"]
            template = spec["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else spec["template"]
            yield doc, template


def test_every_container_has_requests_limits_and_a_locked_down_security_context():
    for doc, template in _workloads():
        name, pod = doc["metadata"]["name"], template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounted_tmp = set()
        for container in _containers_of(doc):
            where = f"{name}/{container['name']}"
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), f"{where}: {kind} {resources[kind]}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounted_tmp |= {m["mountPath"] for m in container.get("volumeMounts", [])}
        if doc["metadata"]["name"] != "redis":  # read-only root: whaleid and Triton write under /tmp
            assert "/tmp" in mounted_tmp, name
    settings = _deployed_settings()
    assert str(settings.run_dir).startswith("/tmp/")  # Faust's data dir is under run_dir


def test_everything_lives_in_the_whaleid_namespace():
    for doc in _all_manifests():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "whaleid"
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
        else:
            assert doc["metadata"].get("namespace") == "whaleid", f"{doc['kind']}/{doc['metadata']['name']}"
    assert yaml.safe_load((BASE / "kustomization.yaml").read_text())["namespace"] == "whaleid"


def test_redis_has_a_password_a_memory_ceiling_and_never_evicts():
    redis_set = next(d for d in _all_manifests() if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis")
    (container,) = _containers_of(redis_set)
    args = container["args"]
    option = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}
    assert option["--maxmemory-policy"] == "noeviction" and option["--appendonly"] == "yes"
    assert option["--requirepass"] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    ref = {"secretKeyRef": {"name": "whaleid-secrets", "key": "WHALEID_REDIS_PASSWORD"}}
    assert env["REDIS_PASSWORD"]["valueFrom"] == ref and env["REDISCLI_AUTH"]["valueFrom"] == ref
    units = {"gb": 1024 ** 3, "mb": 1024 ** 2}
    maxmemory = int(option["--maxmemory"][:-2]) * units[option["--maxmemory"][-2:]]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and maxmemory <= 0.8 * int(limit[:-2]) * 1024 ** 3  # room for the AOF rewrite
    # the services authenticate with the same Secret key: it is added to their WHALEID_REDIS_URL
    import redis as redis_lib

    settings = _deployed_settings(password="p@ss/word")
    kwargs = redis_lib.Redis.from_url(settings.redis_url).connection_pool.connection_kwargs
    assert kwargs["password"] == "p@ss/word" and kwargs["host"] == "redis"
    secret = next(d for d in _docs(BASE / "settings.yaml") if d["kind"] == "Secret")
    assert "WHALEID_REDIS_PASSWORD" in secret["stringData"]


KAFKA_CLIENTS = {"gateway", "bridge", "worker", "matcher", "reconciler", "webhooks"}


def test_kafka_speaks_tls_with_scram_and_every_client_is_configured_for_it():
    kafka = next(d for d in _all_manifests() if d["kind"] == "Kafka")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert all(entry["tls"] is True and entry["authentication"]["type"] == "scram-sha-512" for entry in listeners)
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    (listener,) = listeners
    settings = _deployed_settings()
    assert settings.kafka_bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    user = next(d for d in _all_manifests() if d["kind"] == "KafkaUser")
    assert user["metadata"]["name"] == settings.kafka_username and user["spec"]["authentication"]["type"] == \
        "scram-sha-512"
    acls = user["spec"]["authorization"]["acls"]
    for topic in topics.ALL_TOPICS:  # the user may read and write every topic of the chain
        granted = set()
        for acl in acls:
            resource = acl["resource"]
            if resource["type"] == "topic" and (topic == resource["name"] if resource["patternType"] == "literal"
                                                else topic.startswith(resource["name"])):
                granted |= set(acl["operations"])
        assert {"Read", "Write"} <= granted or "All" in granted, topic
    peers = listener["networkPolicyPeers"][0]["podSelector"]["matchLabels"]
    clients = set()
    for doc, template in _workloads():
        name = doc["metadata"]["name"]
        labels = template["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in peers.items()):
            clients.add(name)
            (container,) = template["spec"]["containers"]
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["WHALEID_KAFKA_PASSWORD"]["valueFrom"] == {
                "secretKeyRef": {"name": user["metadata"]["name"], "key": "password"}}, name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(settings.kafka_ssl_cafile).parent) in mounts, name
            ca = next(v for v in template["spec"]["volumes"] if v["name"] == "kafka-ca")
            assert ca["secret"]["secretName"] == f"{kafka['metadata']['name']}-cluster-ca-cert", name
    assert clients == KAFKA_CLIENTS


# --------------------------------------------------------------------------- NetworkPolicies, evaluated
def _selects(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if (operator == "In" and value not in expression["values"]) or \
                (operator == "NotIn" and value in expression["values"]) or \
                (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def _pods() -> dict[str, tuple[dict, dict[str, int]]]:
    """name -> (pod labels, named container ports); Strimzi's pods as Strimzi labels them (listener 9093)."""
    pods = {}
    for doc, template in _workloads():
        ports = {p["name"]: p["containerPort"] for c in _containers_of(doc) for p in c.get("ports", [])}
        pods[doc["metadata"]["name"]] = (template["metadata"]["labels"], ports)
    pods["kafka"] = ({"strimzi.io/cluster": "whaleid", "strimzi.io/kind": "Kafka"}, {"tcp-clientstls": 9093})
    return pods


def _port_allowed(rule: dict, port: int, named: dict[str, int]) -> bool:
    if not rule.get("ports"):
        return True
    return any(p.get("port") in (port, *[n for n, v in named.items() if v == port]) for p in rule["ports"])


def _peer_allows(rule: dict, direction: str, labels: dict) -> bool:
    peers = rule.get(direction)
    if not peers:
        return True  # no `from`/`to`: every source / destination
    return any("podSelector" in peer and "namespaceSelector" not in peer and _selects(peer["podSelector"], labels)
               for peer in peers)


@functools.cache
def _network() -> tuple[dict, list[dict], dict]:
    manifests = _all_manifests()
    return (_pods(), [d for d in manifests if d["kind"] == "NetworkPolicy"],
            next(d for d in manifests if d["kind"] == "Kafka"))


def _allowed(source: str, destination: str, port: int) -> bool:
    pods, policies, kafka = _network()
    (src_labels, _), (dst_labels, dst_ports) = pods[source], pods[destination]
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"],
                                                                                        src_labels)]
    out = any(_peer_allows(rule, "to", dst_labels) and _port_allowed(rule, port, dst_ports)
              for p in egress for rule in p["spec"].get("egress", []))
    if destination == "kafka":  # Strimzi writes the listener's ingress policy from networkPolicyPeers
        (listener,) = kafka["spec"]["kafka"]["listeners"]
        return out and port == listener["port"] and any(
            _selects(peer["podSelector"], src_labels) for peer in listener["networkPolicyPeers"])
    ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"],
                                                                                          dst_labels)]
    into = any(_peer_allows(rule, "from", src_labels) and _port_allowed(rule, port, dst_ports)
               for p in ingress for rule in p["spec"].get("ingress", []))
    return out and into


ALLOWED_FLOWS = [("worker", "triton", 8001), ("worker", "triton", 8000), ("worker", "redis", 6379),
                 ("gateway", "redis", 6379), ("matcher", "redis", 6379), ("reconciler", "redis", 6379),
                 ("bridge", "redis", 6379), ("webhooks", "redis", 6379), ("reindex", "redis", 6379),
                 *[(client, "kafka", 9093) for client in sorted(KAFKA_CLIENTS)]]
DENIED_FLOWS = [("gateway", "triton", 8001), ("matcher", "triton", 8001), ("triton", "redis", 6379),
                ("reindex", "kafka", 9093), ("triton", "kafka", 9093), ("worker", "kafka", 9092),
                ("redis", "gateway", 8080), ("worker", "matcher", 9403), ("worker", "redis", 6380),
                ("gateway", "matcher", 6069)]


def test_network_policies_deny_by_default_and_allow_the_chains_flows():
    policies = [d for d in _all_manifests() if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for flow in ALLOWED_FLOWS:
        assert _allowed(*flow), f"{flow} should be allowed"
    for flow in DENIED_FLOWS:
        assert not _allowed(*flow), f"{flow} should be denied"
    for name, (labels, _) in _pods().items():  # every pod is named by a policy beyond the default deny
        assert any(p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels) for p in policies), name


def test_only_the_gateways_api_port_is_open_to_everyone():
    policies = [d for d in _all_manifests() if d["kind"] == "NetworkPolicy"]
    open_rules = [(p["metadata"]["name"], rule) for p in policies for rule in p["spec"].get("ingress", [])
                  if not rule.get("from")]
    assert [(name, rule["ports"]) for name, rule in open_rules] == [("gateway", [{"protocol": "TCP", "port": "http"}])]
    scrape = next(p for p in policies if p["metadata"]["name"] == "prometheus-scrape")
    assert scrape["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    gateway = next(d for d in _all_manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    ports = {p["name"]: p["containerPort"] for p in _containers_of(gateway)[0]["ports"]}
    assert ports["http"] != ports["metrics"]  # /metrics is not on the public port
