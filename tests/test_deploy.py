"""deploy/: Kubernetes manifests, the Compose file and the container images, checked without a cluster or
a Docker engine (none runs on these machines).

The kustomize overlays are rendered by `kustomize()` below, a small renderer for exactly the kustomize
features deploy/k8s uses (resources, components, namespace, images, whole-document strategic-merge patches);
it refuses any other kustomization field rather than render it wrongly, and where kubectl is installed its
output is compared with `kubectl kustomize`. Every rendered document is validated against the Kubernetes
OpenAPI schemas of a pinned version (kubernetes-validate, strict: unknown fields fail), and compose.yaml
against the Compose specification schema (as vendored by check-jsonschema).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.specifiers import SpecifierSet

from tunery.services.kit.settings import DEFAULT_PORTS, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"
OVERLAYS = ["dev", "prod"]
HEALTH_NAMES = {"dataset": "tunery.dataset.v1.DatasetService", "trainer": "tunery.trainer.v1.TrainerService",
                "registry": "tunery.registry.v1.ModelRegistryService"}

# --- a minimal kustomize --------------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images"}
CLUSTER_SCOPED = {"Namespace"}
# patchMergeKey of the merge-by-key lists our patches touch; other lists are replaced, as kubectl does for
# lists without a merge strategy. Lists with a merge key this renderer does not know are refused.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}
UNSUPPORTED_MERGE_LISTS = {"ports", "topologySpreadConstraints", "imagePullSecrets", "finalizers"}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strategic_merge(base, patch, field: str | None = None):
    """Strategic-merge `patch` into `base` (null deletes a key; keyed lists merge item by item)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged[key], value, key) if key in merged else value
        return merged
    if isinstance(patch, list):
        assert field not in UNSUPPORTED_MERGE_LISTS, f"renderer cannot strategic-merge `{field}` lists"
        if field in MERGE_KEYS and isinstance(base, list):
            key = MERGE_KEYS[field]
            merged = []
            for item in patch:
                old = next((old for old in base if old[key] == item[key]), None)
                merged.append(item if old is None else strategic_merge(old, item))
            # kustomize puts the patch's items first, in its order (merged or new), then the others
            return merged + [old for old in base if old[key] not in {item[key] for item in patch}]
    return patch


def _pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec")
    return [spec] if spec else []


def _set_image(image: str, rule: dict) -> str:
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else f"{name}@{digest}" if digest else name


def kustomize(directory: Path, inherited: list[dict] | None = None) -> list[dict]:
    """Render a Kustomization (or, with `inherited`, apply a Component to the parent's resources)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: fields {sorted(unknown)} are not implemented by this renderer"
    assert spec["kind"] == ("Kustomization" if inherited is None else "Component"), directory
    docs = list(inherited or [])
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += kustomize(path) if path.is_dir() else load_documents(path)
    for entry in spec.get("components", []):
        docs = kustomize(directory / entry, inherited=docs)
    for entry in spec.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only whole-document patches are implemented: {entry}"
        (patch,) = load_documents(directory / entry["path"])
        targets = [i for i, doc in enumerate(docs) if (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
                   == (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])]
        assert len(targets) == 1, f"{directory / entry['path']} matches {len(targets)} resources"
        docs[targets[0]] = strategic_merge(docs[targets[0]], patch)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"] = {**doc["metadata"], "namespace": spec["namespace"]}
            if doc["kind"] == "RoleBinding":  # kustomize 5 also moves ServiceAccount subjects
                doc["subjects"] = [{**s, "namespace": spec["namespace"]} if s["kind"] == "ServiceAccount" else s
                                   for s in doc["subjects"]]
    for rule in spec.get("images", []):
        for doc in docs:
            for pod in _pod_specs(doc):
                for container in pod.get("initContainers", []) + pod["containers"]:
                    container["image"] = _set_image(container["image"], rule)
    return docs


def test_renderer_merges_by_key_and_replaces_plain_lists():
    base = {"spec": {"containers": [{"name": "a", "args": ["x"], "env": [{"name": "K", "value": "1"},
                                                                          {"name": "M", "value": "3"}]}],
                     "drop": 1}}
    patch = {"spec": {"containers": [{"name": "a", "args": ["y"], "env": [{"name": "M", "value": "4"},
                                                                          {"name": "L", "value": "2"}]},
                                     {"name": "b"}], "drop": None}}
    # What `kubectl kustomize` (v5) gives for the same patch.
    assert strategic_merge(base, patch) == {"spec": {"containers": [
        {"name": "a", "args": ["y"], "env": [{"name": "M", "value": "4"}, {"name": "L", "value": "2"},
                                             {"name": "K", "value": "1"}]},
        {"name": "b"}]}}
    assert _set_image("tunery-trainer:0.1.0", {"name": "tunery-trainer", "newName": "r.io/t"}) == "r.io/t:0.1.0"
    assert _set_image("r:5000/x:1", {"name": "r:5000/x", "newTag": "2"}) == "r:5000/x:2"
    assert _set_image("other:1", {"name": "tunery-trainer", "newTag": "2"}) == "other:1"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its built-in kustomize)")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(overlay):
    """Where kubectl is installed (it is on the development machines), the real kustomize is the judge."""
    output = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                            text=True, timeout=120, check=True).stdout
    real = sorted((d for d in yaml.safe_load_all(output) if d), key=lambda d: (d["kind"], d["metadata"]["name"]))
    ours = sorted(kustomize(K8S / "overlays" / overlay), key=lambda d: (d["kind"], d["metadata"]["name"]))
    assert ours == real


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- Kubernetes -----------------------------------------------------------------------------------------

def test_every_rendered_document_matches_the_kubernetes_schema(rendered):
    overlay, docs = rendered
    seen = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{overlay}: {key} defined twice"
        seen.add(key)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error.message}")
    namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] not in CLUSTER_SCOPED}
    assert namespaces == set(by_kind(docs, "Namespace")), f"{overlay}: every resource in the overlay's namespace"


def test_deployments_probe_grpc_health_run_as_non_root_and_have_resources(rendered):
    overlay, docs = rendered
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"tunery-{service}" for service in DEFAULT_PORTS}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        service = name.removeprefix("tunery-")
        assert container["args"] == [service], name
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        assert port == DEFAULT_PORTS[service], name
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["TUNERY_PORT"] == str(port), f"{name}: the server must listen where the probes look"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{overlay}/{name}: {probe} not on the grpc port"
        assert container["readinessProbe"]["grpc"]["service"] == HEALTH_NAMES[service], name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], name
        assert pod["terminationGracePeriodSeconds"] > stop_seconds(service, env), name


def test_services_expose_only_a_port_named_grpc_that_reaches_a_deployment(rendered):
    _, docs = rendered
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment").values()]
    ours = {name: s for name, s in by_kind(docs, "Service").items() if "selector" in s["spec"]}
    assert set(ours) == {f"tunery-{service}" for service in DEFAULT_PORTS}
    for name, service in ours.items():
        assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"], name
        assert service["spec"]["ports"][0]["targetPort"] == "grpc", name
        assert sum(selects(service["spec"]["selector"], labels) for labels in pod_labels) == 1, name
    # The addresses services use for each other name these Services and ports.
    config = by_kind(docs, "ConfigMap")["tunery-config"]["data"]
    for service in DEFAULT_PORTS:
        host, port = config[f"TUNERY_{service.upper()}_TARGET"].split(":")
        assert ours[host]["spec"]["ports"][0]["port"] == int(port), service


def test_external_endpoints_give_postgres_and_minio_in_cluster_names(rendered):
    _, docs = rendered
    services, secret = by_kind(docs, "Service"), by_kind(docs, "Secret")["tunery-secrets"]["stringData"]
    assert services["postgres"]["spec"]["type"] == "ExternalName"
    assert "@postgres:5432/" in secret["TUNERY_DATABASE_URL"]
    minio_port = services["minio"]["spec"]["ports"][0]["port"]
    slices = [s for s in by_kind(docs, "EndpointSlice").values()
              if s["metadata"]["labels"]["kubernetes.io/service-name"] == "minio"]
    assert slices and all(s["ports"][0]["port"] == minio_port for s in slices)
    config = by_kind(docs, "ConfigMap")["tunery-config"]["data"]
    assert config["TUNERY_S3_ENDPOINT"] == f"minio:{minio_port}"


def test_disruption_budgets_and_network_policies_select_our_pods(rendered):
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == {"tunery-dataset", "tunery-registry"}
    for name, budget in budgets.items():
        assert selects(budget["spec"]["selector"]["matchLabels"],
                       deployments[name]["spec"]["template"]["metadata"]["labels"]), name
    policies = by_kind(docs, "NetworkPolicy")
    assert policies["tunery-default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        policy = policies[name]["spec"]
        assert selects(policy["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
        allowed = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
        assert allowed == [p["containerPort"] for p in container["ports"]], name


def test_trainer_gets_exactly_the_job_and_pod_verbs_only_with_the_kubernetes_executor(rendered):
    overlay, docs = rendered
    trainer = by_kind(docs, "Deployment")["tunery-trainer"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in trainer["containers"][0]["env"]}
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    if overlay == "dev":  # local executor: no API access at all
        assert not roles and not bindings and "TUNERY_TRAINER_EXECUTOR" not in env
        assert trainer["automountServiceAccountToken"] is False
        return
    assert env["TUNERY_TRAINER_EXECUTOR"] == "kubernetes"
    assert trainer["automountServiceAccountToken"] is True
    # Workers run the trainer's own image, as a ServiceAccount without API access.
    assert env["TUNERY_TRAINER_KUBERNETES_IMAGE"] == trainer["containers"][0]["image"]
    workers = by_kind(docs, "ServiceAccount")[env["TUNERY_TRAINER_KUBERNETES_SERVICE_ACCOUNT"]]
    assert workers["automountServiceAccountToken"] is False
    assert not [b for b in bindings.values() if {"kind": "ServiceAccount", "name": workers["metadata"]["name"],
                                                 "namespace": workers["metadata"]["namespace"]} in b["subjects"]]
    (role,) = roles.values()
    grants = {(group, resource): sorted(rule["verbs"])
              for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert grants == {("batch", "jobs"): ["create", "delete", "list", "watch"], ("", "pods"): ["list", "watch"]}
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"]), "no resourceNames etc."
    (binding,) = bindings.values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": trainer["serviceAccountName"],
                                    "namespace": binding["metadata"]["namespace"]}]
    assert trainer["serviceAccountName"] in by_kind(docs, "ServiceAccount")


def test_overlays_pick_images_and_replicas():
    dev = by_kind(kustomize(K8S / "overlays" / "dev"), "Deployment")
    prod = by_kind(kustomize(K8S / "overlays" / "prod"), "Deployment")
    image = {name: d["spec"]["template"]["spec"]["containers"][0]["image"] for name, d in prod.items()}
    assert image == {"tunery-dataset": "registry.example.com/tunery/services:0.1.0",
                     "tunery-registry": "registry.example.com/tunery/services:0.1.0",
                     "tunery-trainer": "registry.example.com/tunery/trainer:0.1.0"}
    assert dev["tunery-trainer"]["spec"]["template"]["spec"]["containers"][0]["image"] == "tunery-services:0.1.0"
    assert [prod[f"tunery-{s}"]["spec"]["replicas"] for s in ("dataset", "registry", "trainer")] == [3, 3, 1]
    assert prod["tunery-trainer"]["spec"]["strategy"] == {"type": "Recreate"}


# --- Compose --------------------------------------------------------------------------------------------

def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    lines = (DEPLOY / "tunery.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def seconds(duration: str) -> float:
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600}[unit] for n, unit in re.findall(r"(\d+)([smh])", duration))


def stop_seconds(service: str, env: dict[str, str]) -> float:
    """How long a service may take after SIGTERM: in-flight calls, then (trainer) workers checkpointing."""
    total = float(env.get("TUNERY_SHUTDOWN_GRACE_S", Settings.shutdown_grace_s))
    if service == "trainer":
        total += float(env.get("TUNERY_TRAINER_STOP_TIMEOUT_S", Settings.trainer_stop_timeout_s))
    return total


def test_compose_matches_the_compose_specification():
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load_compose())]
    assert not errors, errors


def test_compose_wires_dependencies_health_and_the_gpu_trainer():
    services = load_compose()["services"]
    tunery = {name: s for name, s in services.items() if s.get("image", "").startswith("tunery-")}
    assert set(tunery) == {"dataset", "registry", "trainer", "trainer-cpu"}
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                dockerfile = services[target].get("build", {}).get("dockerfile")
                assert "test" in services[target].get("healthcheck", {}) or (
                    dockerfile and "HEALTHCHECK" in (ROOT / dockerfile).read_text()), f"{target} has no health check"
    for name, service in tunery.items():
        assert {"postgres", "minio", "minio-init"} <= set(service["depends_on"]), name
        assert service["environment"]["TUNERY_PORT"] == str(DEFAULT_PORTS[service["command"][0]]), name
    # Exactly one trainer per profile, both reachable as `trainer`.
    trainers = {name: s for name, s in tunery.items() if s["command"] == ["trainer"]}
    assert sorted(p for s in trainers.values() for p in s["profiles"]) == ["cpu", "gpu"]
    assert env_example()["COMPOSE_PROFILES"] in ("cpu", "gpu")
    for name, trainer in trainers.items():
        assert trainer["networks"]["default"]["aliases"] == ["trainer"], name
        assert seconds(trainer["stop_grace_period"]) > stop_seconds("trainer", trainer["environment"]), name
    gpu = services["trainer"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "deploy/images/trainer.Dockerfile"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"


def test_compose_interpolates_only_variables_of_the_env_file():
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used and used <= set(env_example()), sorted(used - set(env_example()))


# --- settings names -------------------------------------------------------------------------------------

def test_every_tunery_variable_in_deploy_is_a_settings_field():
    known = {f"TUNERY_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    used = {name for name in env_example() if name.startswith("TUNERY_")}
    for service in load_compose()["services"].values():
        used |= {name for name in service.get("environment", {}) if name.startswith("TUNERY_")}
    for overlay in OVERLAYS:
        docs = kustomize(K8S / "overlays" / overlay)
        for doc in docs:
            used |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
            for pod in _pod_specs(doc):
                used |= {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    for dockerfile in (DEPLOY / "images").glob("*.Dockerfile"):
        used |= set(re.findall(r"\b(TUNERY_[A-Z0-9_]+)=", dockerfile.read_text()))
    used = {name for name in used if name.startswith("TUNERY_")}
    assert used <= known, f"not Settings fields: {sorted(used - known)}"


# --- images ---------------------------------------------------------------------------------------------

def healthcheck_command(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    (command,) = re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    return json.loads(command)


@pytest.mark.parametrize("image", ["services", "trainer"])
def test_dockerfiles_are_multi_stage_pinned_and_non_root(image):
    text = (DEPLOY / "images" / f"{image}.Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base)
    assert match, f"base image not pinned to an exact tag or digest: {base}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert match.group(1) in SpecifierSet(project["requires-python"])
    (torch_version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", text, re.MULTILINE)
    (torch_range,) = [d.removeprefix("torch") for d in project["dependencies"] if d.startswith("torch")]
    assert torch_version in SpecifierSet(torch_range)
    assert '"torch==${TORCH_VERSION}"' in text
    assert ("download.pytorch.org/whl/cpu" in text) == (image == "services"), "CPU index only for the CPU image"
    assert "pip install ./clients/python ." in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"tunery.services\"\]$", text, re.MULTILINE)


def test_image_healthcheck_follows_grpc_health():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for image in ("services", "trainer"):
            command = healthcheck_command(DEPLOY / "images" / f"{image}.Dockerfile")
            assert command[0] == "python"
            argv = [sys.executable, *command[1:]]
            env = {"TUNERY_PORT": str(port), "PATH": str(Path(sys.executable).parent)}
            for status, expected in ((health_pb2.HealthCheckResponse.SERVING, 0),
                                     (health_pb2.HealthCheckResponse.NOT_SERVING, 1)):
                servicer.set("", status)
                result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
                assert result.returncode == expected, (image, status, result.stderr)
    finally:
        server.stop(None)
