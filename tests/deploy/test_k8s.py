"""deploy/k8s: every manifest valid offline, and what it says about the server true of the server.

Built-in kinds are validated with kubernetes-validate (the Kubernetes OpenAPI schemas, strict:
unknown fields fail) for the oldest and newest Kubernetes it knows. The operators' kinds
(ServiceMonitor, PrometheusRule, InferenceService) have no schema there: their fields are checked
one by one, and the pod part of the InferenceService is validated as a core Pod. Probe paths,
ports, environment variables and the grace period are checked against the FastAPI app's real
routes, elf-serve's flags and the settings object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.routing import Match

from server.app import create_app
from server.cli import parse_args
from server.metrics import Metrics
from server.settings import Settings
from tests.deploy.dockerfiles import exec_form, parse_dockerfile
from tests.deploy.queries import REPO, RULES, exposed_families

K8S = REPO / "deploy" / "k8s"
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
CRDS = {"ServiceMonitor", "PrometheusRule", "InferenceService", "Kustomization"}
BUNDLED_MODEL_DIR = "/opt/elf/models/fashion-mnist-lt"


def _docs() -> dict[str, dict[str, Any]]:
    """Every YAML document under deploy/k8s, by 'relative/path.yaml:Kind'."""
    out = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{path.relative_to(K8S)}:{doc['kind']}"] = doc
    return out


DOCS = _docs()


def _one(kind: str, where: str = "") -> dict[str, Any]:
    found = [d for key, d in DOCS.items() if key.endswith(f":{kind}") and key.startswith(where)]
    assert len(found) == 1, (kind, where, list(DOCS))
    return found[0]


class GetRoutes:
    """`path in routes`: whether the app has a route that fully matches GET path (the probes' and
    scrapers' method), asked of Starlette's own router as a request would be."""

    def __init__(self) -> None:
        self.routes = create_app(Settings(model_dir=Path("/nonexistent"))).router.routes

    def __contains__(self, path: object) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
        return any(r.matches(scope)[0] == Match.FULL for r in self.routes)


@pytest.fixture(scope="module")
def get_routes() -> GetRoutes:
    routes = GetRoutes()
    assert "/v2/health/ready" in routes and "/metrics" in routes
    assert "/v2/health/nope" not in routes
    return routes


def test_all_manifests_found() -> None:
    kinds = sorted(key.split(":")[1] for key in DOCS)
    assert kinds == sorted(
        [
            "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "HorizontalPodAutoscaler",
            "InferenceService", "Kustomization", "Namespace", "PodDisruptionBudget",
            "PrometheusRule", "Service", "ServiceMonitor",
        ]
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("key", [k for k in DOCS if k.split(":")[1] not in CRDS])
def test_builtin_kinds_validate_strictly(key: str, version: str) -> None:
    assert kubernetes_validate.validate(DOCS[key], version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(_one("Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_kustomization_lists_every_base_manifest() -> None:
    kustomization = _one("Kustomization")
    base = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == base
    assert kustomization["images"][0]["name"] == _pod_container(_one("Deployment"))["image"]
    namespace = _one("Namespace")
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _pod_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == port)


def _check_server_container(container: dict[str, Any], routes: GetRoutes, pod: dict[str, Any]):
    """The checks a Deployment's and the InferenceService's server container share."""
    argv = [*container["command"], *container["args"]]
    assert argv[0] == "elf-serve"
    flags = parse_args(argv[1:])
    # HTTP first, then gRPC (the Open Inference Protocol's GRPCInferenceService, cleartext HTTP/2).
    grpc_port = int(flags.grpc_port or Settings.model_fields["grpc_port"].default)
    assert [int(p["containerPort"]) for p in container["ports"]] == [flags.port, grpc_port]
    assert container["ports"][1]["name"] in ("grpc", "h2c")  # h2c: KServe's name for gRPC
    assert flags.host == "0.0.0.0"
    probes = {k: container[k] for k in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for name in ("readinessProbe", "livenessProbe", "startupProbe"):
        if name in container:
            get = container[name]["httpGet"]
            assert get["path"] in routes, (name, get["path"])
            assert _port_number(container, get["port"]) == flags.port, name
    # Termination: preStop sleep + the server's graceful timeout fit in the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pause = float(pre_stop[1]) if pre_stop else 0.0
    assert pod["terminationGracePeriodSeconds"] > flags.graceful_timeout + pause
    # Every ELF_* variable is a setting and the values parse (Settings forbids unknown fields).
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {k.removeprefix("ELF_").lower(): v for k, v in env.items()}
    assert set(fields) <= set(Settings.model_fields), env
    assert Settings(**fields).model_dir == Path(BUNDLED_MODEL_DIR)
    # Non-root with the image's user, nothing writable but the mounted /tmp.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # useradd --uid in docker/Dockerfile
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    threads = int(env["ELF_INTRA_OP_THREADS"])
    assert threads <= float(container["resources"]["limits"]["cpu"])


def test_deployment_matches_the_server(get_routes: GetRoutes) -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    _check_server_container(_pod_container(deployment), get_routes, pod)
    assert (
        deployment["spec"]["template"]["metadata"]["labels"]
        == (deployment["spec"]["selector"]["matchLabels"])
    )


def test_the_serving_image_agrees() -> None:
    """The image's user id, port and bundled model are what the manifests assume."""
    df = parse_dockerfile(REPO / "docker" / "Dockerfile")
    runs = " ".join(i.args for i in df.final.instructions if i.keyword == "RUN")
    assert "--uid 10001" in runs
    cmd = exec_form(next(i.args for i in df.final.instructions if i.keyword == "CMD"))
    assert cmd is not None
    assert cmd[cmd.index("--port") + 1] == str(_one("Deployment")["spec"]["template"]["spec"][
        "containers"][0]["ports"][0]["containerPort"])  # fmt: skip
    env = " ".join(i.args for i in df.final.instructions if i.keyword == "ENV")
    assert f"ELF_MODEL_DIR={BUNDLED_MODEL_DIR}" in env


def test_service_pdb_hpa_and_monitor_select_the_pods() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, pdb, monitor = _one("Service"), _one("PodDisruptionBudget"), _one("ServiceMonitor")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    container = _pod_container(deployment)
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for where in ("hpa.yaml", "optional/hpa-queue-depth.yaml"):
        hpa = _one("HorizontalPodAutoscaler", where)
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]


def test_queue_depth_autoscaling_uses_a_real_gauge() -> None:
    families = exposed_families(Metrics().render()[0].decode())
    hpa = _one("HorizontalPodAutoscaler", "optional/")
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    name = pods_metric["pods"]["metric"]["name"]
    assert families[name] == "gauge"
    adapter = yaml.safe_load(_one("ConfigMap", "optional/")["data"]["config.yaml"])
    rule = adapter["rules"][0]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_prometheus_rule_is_rules_yml() -> None:
    rule = _one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_inference_service_runs_the_image_as_a_custom_predictor(get_routes: GetRoutes) -> None:
    isvc = _one("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= {
        "minReplicas", "maxReplicas", "terminationGracePeriodSeconds", "securityContext",
        "containers", "volumes",
    }  # fmt: skip
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"  # KServe's name for the serving container
    assert container["image"] == "elf-serving:cpu"
    _check_server_container(container, get_routes, predictor)
    annotations = isvc["metadata"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == container["ports"][0]["containerPort"]
    assert annotations["prometheus.kserve.io/path"] in get_routes
    # The pod part is a core PodSpec: validate it as one.
    pod_keys = ("terminationGracePeriodSeconds", "securityContext", "containers", "volumes")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {k: predictor[k] for k in pod_keys},
    }
    assert kubernetes_validate.validate(pod, VERSIONS[0], strict=True)
