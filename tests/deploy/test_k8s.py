"""k8s/: schema-valid manifests, buildable kustomizations, and the contract with the pipelines.

Offline and in seconds: kubernetes-validate (Kubernetes JSON schemas bundled) checks every
manifest with --strict; the ServiceMonitor CRD, which it has no schema for, is checked against
servicemonitor.schema.json. kustomize_lite builds the kustomizations (``kubectl kustomize``
is compared with it where kubectl is installed), and the tests below read the built objects:
security contexts, resources, probes, Service selectors, Secret and ConfigMap references, the
GPU node pool's label and taint.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from synthmri import __version__

from .kustomize_lite import Build, build, load_documents

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
HERE = Path(__file__).resolve().parent

#: Kubernetes version of the schemas (kubernetes-validate bundles 1.25 to 1.37).
KUBERNETES_VERSION = "1.30.0"

#: Every kustomization a platform engineer applies.
KUSTOMIZATIONS = ["base", "monitoring", "overlays/gpu-node-pool"]
#: Secret templates: applied by hand after filling, never by a kustomization.
SECRET_TEMPLATES = K8S / "secrets" / "secrets.template.yaml"

#: CRD kinds kubernetes-validate has no schema for, and the schema used instead.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor.schema.json"}

# ---------------------------------------------------------------------------- the contract
# What pipelines/ and components/ rely on (docs/design.md, pipelines' defaults).

NAMESPACE = "kubeflow"
IMAGE = f"ghcr.io/synthmri/synthmri:{__version__}"
SERVICES = {"postgres": {5432}, "minio": {9000, 9001}, "mlflow": {5000}, "pushgateway": {9091}}
ENDPOINTS = {"SYNTHMRI_PUSHGATEWAY": "pushgateway:9091", "AWS_ENDPOINT_URL": "http://minio:9000"}
SECRETS = {
    "synthmri-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "synthmri-minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "synthmri-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD"},
    "synthmri-mlflow-auth": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
}
#: Secrets the stack itself needs (synthmri-mlflow-auth is for pipeline pods, optional).
SECRETS_USED_BY_STACK = {"synthmri-s3", "synthmri-minio", "synthmri-postgres"}
BUCKETS = {"synthmri-data", "synthmri-mlflow"}
GPU_NODE_LABEL = ("synthmri.io/node-pool", "gpu")
GPU_TAINT = ("nvidia.com/gpu", "present", "NoSchedule")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}
#: Workloads allowed to run as root, and why (the rest of the security context still applies).
ROOT_EXEMPT = {
    ("DaemonSet", "nvidia-device-plugin"): "creates its socket in the kubelet's root-owned directory",
}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def builds() -> dict[str, Build]:
    return {name: build(K8S / name) for name in KUSTOMIZATIONS}


def of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def named(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template (metadata + spec) of a workload."""
    if workload["kind"] == "Pod":
        return workload
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec["containers"]


def workloads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] in WORKLOAD_KINDS]


def all_built(builds: dict[str, Build]) -> list[dict[str, Any]]:
    """Every object any kustomization builds, once (the overlay repeats the base)."""
    seen, out = set(), []
    for b in builds.values():
        for r in b.resources:
            key = (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def env_value(container: dict[str, Any], name: str) -> str:
    values = [e["value"] for e in container.get("env") or [] if e["name"] == name and "value" in e]
    assert values, f"container {container['name']} sets no literal {name}"
    return values[0]


def manifest_files() -> list[Path]:
    """Every YAML file under k8s/ that holds Kubernetes objects (not kustomizations, not patches)."""
    patches = set().union(*(build(K8S / name).patch_files for name in KUSTOMIZATIONS))
    return sorted(
        p for p in K8S.rglob("*.y*ml")
        if p.name not in ("kustomization.yaml", "kustomization.yml") and p.resolve() not in patches
    )


# ---------------------------------------------------------------------------- schemas


def test_every_manifest_passes_kubernetes_validate_strict() -> None:
    """kubernetes-validate --strict: unknown fields and wrong types fail; only CRDs may lack a schema."""
    files = manifest_files()
    assert len(files) >= 8, files
    cli = Path(sys.executable).with_name("kubernetes-validate")
    command = [str(cli) if cli.exists() else "kubernetes-validate"]
    result = subprocess.run(
        [*command, "--strict", "-k", KUBERNETES_VERSION, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and "FATAL" not in output, output
    crd_kinds = {kind for _, kind in CRD_SCHEMAS}
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in crd_kinds), f"no schema for: {line}"
    # Every object was validated, or is a CRD validated below.
    documents = [(path, doc) for path in files for doc in load_documents(path)]
    passed = sum(1 for line in output.splitlines() if line.startswith("INFO") and " passed " in line)
    crds = sum(1 for _, doc in documents if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS)
    assert passed + crds == len(documents), output


def test_custom_resources_match_their_crd_schema() -> None:
    documents = [doc for path in manifest_files() for doc in load_documents(path)]
    custom = [doc for doc in documents if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS]
    assert custom, "k8s/ is expected to hold a ServiceMonitor"
    for doc in custom:
        schema = json.loads(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])].read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)


def test_servicemonitor_schema_is_strict() -> None:
    """The hand-written schema rejects what the CRD rejects: a misspelt field, a wrong type."""
    schema = json.loads(CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")].read_text())
    (monitor,) = load_documents(K8S / "monitoring" / "servicemonitor.yaml")
    validator = jsonschema.Draft202012Validator(schema)
    for path, bad in ((("endpoints", 0, "honorLabel"), True), (("endpoints", 0, "honorLabels"), "yes"),
                      (("endpoints", 0, "interval"), "30 seconds")):
        broken = json.loads(json.dumps(monitor))
        target = broken["spec"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        assert not validator.is_valid(broken), path


def test_patched_objects_still_validate(builds: dict[str, Build]) -> None:
    """Patches produce schema-valid objects (kubernetes-validate's Python API, same strict schemas)."""
    import kubernetes_validate

    for resource in workloads(builds["overlays/gpu-node-pool"].resources):
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------- kustomizations


def test_kustomizations_build_and_cover_every_manifest(builds: dict[str, Build]) -> None:
    used = set().union(*(b.resource_files | b.patch_files | b.kustomizations for b in builds.values()))
    on_disk = {p.resolve() for p in K8S.rglob("*.y*ml")}
    orphans = on_disk - used - {SECRET_TEMPLATES.resolve()}
    assert not orphans, f"manifests no kustomization uses: {sorted(map(str, orphans))}"
    found = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")}
    assert found == set(KUSTOMIZATIONS), "a new kustomization needs adding to KUSTOMIZATIONS"


def test_base_namespace_is_where_kfp_runs_pipeline_pods() -> None:
    for name in ("base", "monitoring"):
        spec = load_documents(K8S / name / "kustomization.yaml")[0]
        assert spec["namespace"] == NAMESPACE, name
    overlay = load_documents(K8S / "overlays" / "gpu-node-pool" / "kustomization.yaml")[0]
    assert "namespace" not in overlay, "the overlay would move the device plugin out of kube-system"


def test_patches_target_base_resources(builds: dict[str, Build]) -> None:
    """Every patch of the overlay changes base workloads (kustomize_lite fails on empty targets)."""
    overlay = builds["overlays/gpu-node-pool"]
    assert overlay.patch_files, "the GPU overlay is expected to patch the base"
    base_keys = {(r["kind"], r["metadata"]["name"]) for r in builds["base"].resources}
    changed = [r for r in overlay.resources
               if (r["kind"], r["metadata"]["name"]) in base_keys and r not in builds["base"].resources]
    assert changed and all((r["kind"], r["metadata"]["name"]) in base_keys for r in changed)


def test_no_secret_values_in_any_kustomization(builds: dict[str, Build]) -> None:
    """`kubectl apply -k` must never create or overwrite Secrets: they are made by hand."""
    for name, b in builds.items():
        secrets = of_kind(b.resources, "Secret")
        assert not secrets, f"{name} builds Secrets {[s['metadata']['name'] for s in secrets]}"
    assert SECRET_TEMPLATES.resolve() not in set().union(*(b.resource_files for b in builds.values()))


def test_secret_templates_name_the_contract_keys_without_values() -> None:
    templates = load_documents(SECRET_TEMPLATES)
    assert {t["metadata"]["name"]: set(t.get("stringData", {})) for t in templates} == SECRETS
    for template in templates:
        assert template["kind"] == "Secret" and template["metadata"]["namespace"] == NAMESPACE
        assert "data" not in template, "templates use stringData, with empty values"
        assert all(value == "" for value in template["stringData"].values()), template["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not on PATH")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_lite_agrees_with_kubectl_kustomize(name: str) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]

    expected = sorted(yaml.safe_load_all(result.stdout), key=key)
    assert sorted(build(K8S / name).resources, key=key) == expected


# ---------------------------------------------------------------------------- workloads


def test_every_workload_is_locked_down(builds: dict[str, Build]) -> None:
    """runAsNonRoot with a numeric UID, seccomp RuntimeDefault, no privilege escalation, no capabilities."""
    checked = 0
    for workload in workloads(all_built(builds)):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_template(workload)["spec"]
        pod_sc = spec.get("securityContext") or {}
        for container in containers(spec):
            sc = {**pod_sc, **(container.get("securityContext") or {})}
            what = f"{where} container {container['name']}"
            assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], what
            assert not (sc.get("capabilities") or {}).get("add") and not sc.get("privileged"), what
            if (workload["kind"], workload["metadata"]["name"]) not in ROOT_EXEMPT:
                assert sc.get("runAsNonRoot") is True, what
                assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, what
            checked += 1
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no workload needs the API"
    assert checked >= 7


def test_every_container_has_requests_a_memory_limit_and_a_pinned_image(builds: dict[str, Build]) -> None:
    for workload in workloads(all_built(builds)):
        for container in containers(pod_template(workload)["spec"]):
            what = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources") or {}
            assert {"cpu", "memory"} <= set(resources.get("requests") or {}), what
            assert "memory" in (resources.get("limits") or {}), what
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{what}: unpinned image {image}"


def test_long_running_containers_have_probes(builds: dict[str, Build]) -> None:
    for workload in workloads(all_built(builds)):
        if workload["kind"] in ("Job", "CronJob", "DaemonSet"):
            continue
        for container in pod_template(workload)["spec"]["containers"]:
            what = f"{workload['metadata']['name']}/{container['name']}"
            assert "readinessProbe" in container and "livenessProbe" in container, what


def test_workload_selectors_match_their_pod_labels(builds: dict[str, Build]) -> None:
    for workload in workloads(all_built(builds)):
        if workload["kind"] in ("Job", "Pod", "CronJob"):
            continue
        labels = pod_template(workload)["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_services_select_a_workload_and_its_ports(builds: dict[str, Build]) -> None:
    for name, b in builds.items():
        for service in of_kind(b.resources, "Service"):
            selector = service["spec"]["selector"]
            pods = [pod_template(w) for w in workloads(b.resources)
                    if w["metadata"].get("namespace") == service["metadata"].get("namespace")
                    and selector.items() <= (pod_template(w)["metadata"].get("labels") or {}).items()]
            assert len(pods) == 1, f"{name}: Service {service['metadata']['name']} selects {len(pods)} workloads"
            ports = [p for c in pods[0]["spec"]["containers"] for p in c.get("ports") or []]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (service, target)


def test_contract_services(builds: dict[str, Build]) -> None:
    base = builds["base"].resources
    for service_name, ports in SERVICES.items():
        service = named(base, "Service", service_name)
        assert {p["port"] for p in service["spec"]["ports"]} == ports, service_name
        assert service["metadata"]["namespace"] == NAMESPACE


def test_endpoints_config_map(builds: dict[str, Build]) -> None:
    config_map = named(builds["base"].resources, "ConfigMap", "synthmri-endpoints")
    assert config_map["data"] == ENDPOINTS
    for value in ENDPOINTS.values():  # each endpoint is one of the stack's Services, on its port
        host, port = re.sub(r"^https?://", "", value).split(":")
        assert int(port) in SERVICES[host], value


def test_secret_references_use_the_contract_names_and_keys(builds: dict[str, Build]) -> None:
    used: dict[str, set[str]] = {}
    for workload in workloads(all_built(builds)):
        spec = pod_template(workload)["spec"]
        for container in containers(spec):
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert env["name"] == ref["key"], f"{env['name']}: expose keys under their own name"
                    used.setdefault(ref["name"], set()).add(ref["key"])
            assert not any("secretRef" in e for e in container.get("envFrom") or []), "name keys explicitly"
        assert not any("secret" in v for v in spec.get("volumes") or [])
    assert set(used) == SECRETS_USED_BY_STACK
    for secret, keys in used.items():
        assert keys == SECRETS[secret], secret


# ---------------------------------------------------------------------------- services


def mlflow_container(builds: dict[str, Build]) -> dict[str, Any]:
    deployment = named(builds["base"].resources, "Deployment", "synthmri-mlflow")
    (container,) = pod_template(deployment)["spec"]["containers"]
    return container


def test_mlflow_server_postgres_backend_and_proxied_s3_artifacts(builds: dict[str, Build]) -> None:
    container = mlflow_container(builds)
    assert container["image"] == IMAGE, "the MLflow server runs the project image of this version"
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    args = container["args"]
    assert "--serve-artifacts" in args and "--no-serve-artifacts" not in args
    assert "--artifacts-destination=s3://synthmri-mlflow/" in args
    assert "--host=0.0.0.0" in args and "--port=5000" in args
    uri = env_value(container, "MLFLOW_BACKEND_STORE_URI")
    assert re.fullmatch(r"postgresql://\$\(POSTGRES_USER\):\$\(POSTGRES_PASSWORD\)@postgres:5432/mlflow", uri), uri
    # The kubelet expands $(VAR) only from variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    assert names.index("POSTGRES_USER") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert env_value(container, "MLFLOW_S3_ENDPOINT_URL") == ENDPOINTS["AWS_ENDPOINT_URL"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    postgres = named(builds["base"].resources, "StatefulSet", "synthmri-postgres")
    assert env_value(pod_template(postgres)["spec"]["containers"][0], "POSTGRES_DB") == "mlflow"


def test_mlflow_accepts_the_host_names_pipelines_use(builds: dict[str, Build]) -> None:
    """MLflow >= 3.5 rejects unknown Host headers; the pipelines call http://mlflow:5000."""
    (flag,) = [a for a in mlflow_container(builds)["args"] if a.startswith("--allowed-hosts=")]
    patterns = flag.split("=", 1)[1].split(",")

    def allowed(host: str) -> bool:  # mlflow.server.security_utils.is_allowed_host_header
        return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)

    for host in ("mlflow:5000", "mlflow", f"mlflow.{NAMESPACE}.svc.cluster.local:5000", "localhost:5000"):
        assert allowed(host), host
    assert not allowed("mlflow.attacker.example:5000") and "*" not in patterns


def test_the_image_has_the_mlflow_server_dependencies() -> None:
    """The MLflow server runs the project image, which installs requirements-lock.txt."""
    pins = {line.split("==")[0].lower() for line in (REPO / "requirements-lock.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert {"mlflow", "boto3", "psycopg2-binary"} <= pins


def test_bucket_job_creates_both_buckets_and_the_pipeline_user(builds: dict[str, Build]) -> None:
    job = named(builds["base"].resources, "Job", "synthmri-create-buckets")
    (container,) = pod_template(job)["spec"]["containers"]
    script = "\n".join(container["args"])
    made = set(re.findall(r"local/([a-z0-9.-]+)", " ".join(re.findall(r"^mc mb .*$", script, re.M))))
    assert made == BUCKETS
    assert 'mc admin user add local "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"' in script
    assert all(f"arn:aws:s3:::{bucket}/*" in script for bucket in BUCKETS)
    assert pod_template(job)["spec"]["restartPolicy"] == "Never" and job["spec"]["activeDeadlineSeconds"] > 0


def test_pushgateway_and_its_service_monitor(builds: dict[str, Build]) -> None:
    deployment = named(builds["base"].resources, "Deployment", "synthmri-pushgateway")
    (container,) = pod_template(deployment)["spec"]["containers"]
    assert re.fullmatch(r"prom/pushgateway:v\d+\.\d+\.\d+", container["image"]), container["image"]
    service = named(builds["base"].resources, "Service", "pushgateway")
    monitor = named(builds["monitoring"].resources, "ServiceMonitor", "synthmri-pushgateway")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["honorLabels"] is True, "keep the job/stage/instance labels pods pushed"
        assert endpoint["port"] in service_ports


# ---------------------------------------------------------------------------- GPU node pool


def test_gpu_overlay_documents_the_node_label_and_taint() -> None:
    text = (K8S / "overlays" / "gpu-node-pool" / "kustomization.yaml").read_text()
    key, value = GPU_NODE_LABEL
    taint_key, taint_value, effect = GPU_TAINT
    assert f"kubectl label node <gpu-node> {key}={value}" in text
    assert f"kubectl taint node <gpu-node> {taint_key}={taint_value}:{effect}" in text
    assert json.dumps(GPU_TOLERATION).replace('"', "") in text.replace('"', "")


def tolerates_gpu_taint(toleration: dict[str, Any]) -> bool:
    key, value, effect = GPU_TAINT
    if toleration.get("effect") not in (None, "", effect):
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", key)
    return toleration.get("key") == key and toleration.get("value") == value


def test_device_plugin_runs_on_the_gpu_pool_only(builds: dict[str, Build]) -> None:
    overlay = builds["overlays/gpu-node-pool"].resources
    plugin = named(overlay, "DaemonSet", "nvidia-device-plugin")
    spec = pod_template(plugin)["spec"]
    assert spec["nodeSelector"] == dict([GPU_NODE_LABEL])
    assert GPU_TOLERATION in spec["tolerations"] and all(map(tolerates_gpu_taint, spec["tolerations"]))
    assert plugin["metadata"]["namespace"] == "kube-system"
    (container,) = spec["containers"]
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s-device-plugin:v\d+\.\d+\.\d+", container["image"])
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/var/lib/kubelet/device-plugins"]


def test_base_workloads_stay_off_the_gpu_pool(builds: dict[str, Build]) -> None:
    key, value = GPU_NODE_LABEL
    base_names = {r["metadata"]["name"] for r in workloads(builds["base"].resources)}
    for workload in workloads(builds["overlays/gpu-node-pool"].resources):
        spec = pod_template(workload)["spec"]
        if workload["metadata"]["name"] not in base_names:
            continue
        assert not any(map(tolerates_gpu_taint, spec.get("tolerations") or [])), workload["metadata"]["name"]
        assert (spec.get("nodeSelector") or {}).get(key) != value
        if workload["kind"] in ("Deployment", "StatefulSet"):
            terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"] == [
                {"matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]}
            ], workload["metadata"]["name"]
