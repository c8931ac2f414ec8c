"""The deployment artefacts: Dockerfile, Kubernetes manifests, compose stack.

Nothing here needs a container engine or a cluster. The Dockerfile is linted by hadolint; the
Kubernetes manifests are built by kustomize when one is on PATH (``kustomize build`` or
``kubectl kustomize``) and read as plain files in any case, then validated against the
Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are errors); the compose
file is validated against the compose specification's JSON Schema (the copy vendored in
check-jsonschema). On top of the schemas, the tests assert what the schemas cannot: the
restricted security context, the probes on the SPEC's endpoints, secrets mounted as files and
every file the configuration names actually mounted.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from daemon.config import Config, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
AKS_OVERLAY = KUBERNETES / "overlays" / "aks-workload-identity"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mailsyncd.json"

# The oldest Kubernetes minor still supported by the major managed offerings, and the newest
# whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", latest_version())
# Custom resources of prometheus-operator: kubernetes-validate ships only the core schemas, so
# these kinds are skipped there and their structure is asserted by the tests below instead.
CRD_GROUP = "monitoring.coreos.com/"
FEDERATED_TOKEN_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
APP_UID = 10001
CONTAINER_TMP = "/tmp"  # noqa: S108 - a path inside the container, not a file of this process
CONFIG_DIR = PurePosixPath("/etc/mailsyncd")
# The ConfigMap kustomize generates, named "<name>-<hash of the content>".
GENERATED_CONFIGMAP = "mailsyncd-config"
HASHED = re.compile(rf"^{GENERATED_CONFIGMAP}-[a-z0-9]{{10}}$")
NODE_LOCAL_DNS = "169.254.20.10/32"

Resource = dict[str, Any]


def _tool(name: str) -> str:
    """A dev tool of the virtualenv (or PATH); its absence is a broken install, not a skip."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make venv` (it is in the dev dependency group)")
    return found


def _load_yaml_documents(text: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# -- Dockerfile ------------------------------------------------------------------------------


def _hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--format", "json", "--failure-threshold", "style", path],
        capture_output=True,
        text=True,
        check=False,
        cwd=path.parent,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]")


def test_hadolint_reports_nothing_on_the_dockerfile() -> None:
    code, findings = _hadolint(DOCKERFILE)
    assert findings == []
    assert code == 0


def test_hadolint_does_report_a_dockerfile_with_known_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\nCMD python app.py\n")
    code, findings = _hadolint(bad)
    assert code != 0
    assert {"DL3006", "DL3008", "DL3025"} <= {f["code"] for f in findings}


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined, by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(args.split())))
    return stages


def test_dockerfile_pins_the_base_and_installs_locked_dependencies_in_their_own_layer() -> None:
    header, *stages = _stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    base = dict(header)["ARG"]
    assert re.fullmatch(
        r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base
    ), base
    assert all(args.startswith("${PYTHON_IMAGE}") for kw, args in (s[0] for s in stages)), stages

    build = stages[0]
    copies = [args for kw, args in build if kw == "COPY"]
    runs = [args for kw, args in build if kw == "RUN"]
    assert copies[0] == "requirements.lock ./", "the lock file alone, before any source"
    assert "--require-hashes" in runs[0]
    assert "-r requirements.lock" in runs[0]
    assert "--only-binary=:all:" in runs[0], "wheels only: no compiler in any stage"
    source_copy = next(i for i, (kw, args) in enumerate(build) if args.startswith("daemon/"))
    lock_install = next(i for i, (kw, args) in enumerate(build) if "requirements.lock" in args)
    assert lock_install < source_copy


def test_runtime_stage_is_unprivileged_with_healthcheck_stopsignal_and_labels() -> None:
    runtime = _stages()[-1]
    instructions: dict[str, list[str]] = {}
    for keyword, args in runtime:
        instructions.setdefault(keyword, []).append(args)

    assert instructions["USER"] == [f"{APP_UID}:{APP_UID}"]
    assert json.loads(instructions["ENTRYPOINT"][0]) == ["mailsyncd"]
    assert json.loads(instructions["CMD"][0]) == ["run", "-c", "/etc/mailsyncd/config.yaml"]
    assert instructions["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(instructions["VOLUME"][0]) == ["/var/lib/mailsyncd"]
    (healthcheck,) = instructions["HEALTHCHECK"]
    assert "/healthz" in healthcheck
    exec_form = json.loads(healthcheck.partition(" CMD ")[2])
    assert exec_form[0] == "python", "the slim image has no curl"
    # Nothing is installed in the runtime stage: no package manager run, no compiler, no cache.
    assert not any("apt-get" in run or "pip install" in run for run in instructions.get("RUN", []))
    assert instructions["COPY"] == ["--from=build /opt/mailsyncd /opt/mailsyncd"]
    labels = " ".join(instructions["LABEL"])
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_only_the_inputs_of_the_image() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:] for line in lines if line.startswith("!")}
    copied = {
        path.rstrip("/")
        for stage in _stages()
        for keyword, args in stage
        if keyword == "COPY" and not args.startswith("--from")
        for path in args.split()[:-1]
    }
    assert copied <= admitted, copied - admitted
    assert not {".venv", ".git", "tests", "deploy"} & admitted


# -- Kubernetes: building --------------------------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if path := shutil.which("kustomize"):
        return [path, "build"]
    if path := shutil.which("kubectl"):
        return [path, "kustomize"]
    return None


def _kustomize_build(directory: Path) -> list[Resource] | None:
    """``kustomize build`` as it is, generated names with their hash (None: no kustomize)."""
    command = _kustomize_command()
    if command is None:
        return None
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return _load_yaml_documents(result.stdout)


def _unhashed(resources: list[Resource]) -> list[Resource]:
    """The generated ConfigMap under its plain name, everywhere it is named."""
    text = json.dumps(resources)
    return json.loads(
        re.sub(rf'"{GENERATED_CONFIGMAP}-[a-z0-9]{{10}}"', f'"{GENERATED_CONFIGMAP}"', text)
    )


def _built(directory: Path) -> list[Resource]:
    """Built by kustomize (generated names without their hash) when available, else plainly."""
    built = _kustomize_build(directory)
    return _unhashed(built) if built is not None else _plain_build(directory)


def _plain_resources(directory: Path) -> list[Resource]:
    """The ``resources`` of a kustomization read as plain files (bases recursively)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            out.extend(_plain_build(path))
        else:
            out.extend(_load_yaml_documents(path.read_text()))
    return out


def _merge(target: Any, patch: Any) -> Any:
    """Strategic merge as far as these overlays need it: maps merge, anything else replaces."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = _merge(target[key], value) if key in target else value
        return merged
    return copy.deepcopy(patch)


def _generate_configmaps(
    directory: Path, kustomization: dict[str, Any], resources: list[Resource]
) -> None:
    """``configMapGenerator`` entries with ``files``: created, or merged into the base's."""
    for entry in kustomization.get("configMapGenerator", []):
        assert set(entry) <= {"name", "files", "behavior", "options"}, entry
        data = {}
        for item in entry["files"]:
            key, _, source = item.rpartition("=")
            data[key or PurePosixPath(source).name] = (directory / source).read_text()
        behavior = entry.get("behavior", "create")
        if behavior == "create":
            metadata: dict[str, Any] = {"name": entry["name"]}
            if labels := entry.get("options", {}).get("labels"):
                metadata["labels"] = dict(labels)
            resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})
            resources[-1]["data"] = data
            continue
        (existing,) = [
            r
            for r in resources
            if r["kind"] == "ConfigMap" and r["metadata"]["name"] == entry["name"]
        ]
        existing["data"] = {**existing["data"], **data} if behavior == "merge" else data


def _plain_build(directory: Path) -> list[Resource]:
    """A kustomization without kustomize: resources, generated ConfigMaps, patch files.

    Only what this repository's kustomizations use: plain resources, ConfigMaps generated
    from files (named without the content hash kustomize appends), patches by file that
    merge maps or delete a resource (``$patch: delete``), and the namespace. The image name
    is left as the Deployment writes it.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
    unsupported = set(kustomization) - known - {"configMapGenerator"}
    assert not unsupported, f"the plain build does not know {unsupported}: use kustomize"
    resources = _plain_resources(directory)
    _generate_configmaps(directory, kustomization, resources)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, entry
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        key = (patch["kind"], patch["metadata"]["name"])
        index = next(
            i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key
        )
        if patch.get("$patch") == "delete":
            del resources[index]
        else:
            resources[index] = _merge(resources[index], patch)
    if namespace := kustomization.get("namespace"):
        for resource in resources:
            if resource["kind"] == "Namespace":
                resource["metadata"]["name"] = namespace
            else:
                resource["metadata"]["namespace"] = namespace
    return resources


BUILDS = {"base": BASE, "aks-workload-identity": AKS_OVERLAY}


@pytest.fixture(scope="module", params=list(BUILDS))
def build(request: pytest.FixtureRequest) -> list[Resource]:
    """The manifests of a kustomization: built by kustomize when available, else plainly."""
    return _built(BUILDS[request.param])


def _ids(resources: list[Resource]) -> set[tuple[str, str]]:
    return {(r["kind"], r["metadata"]["name"]) for r in resources}


def test_plain_files_build_the_same_resources_as_kustomize() -> None:
    for directory in BUILDS.values():
        hashed = _kustomize_build(directory)
        if hashed is None:
            pytest.skip("no kustomize on PATH (kustomize or kubectl): plain files only")
        built = _unhashed(hashed)
        plain = _plain_build(directory)
        assert _ids(plain) == _ids(built)
        # Apart from the image name that kustomize rewrites, the contents agree too.
        for resource in built:
            (twin,) = [r for r in plain if _ids([r]) == _ids([resource])]
            assert _strip_images(twin) == _strip_images(resource), resource["metadata"]["name"]


def _strip_images(resource: Resource) -> Resource:
    text = json.dumps(resource, sort_keys=True)
    return json.loads(re.sub(r'"image": "[^"]*"', '"image": "-"', text))


# -- Kubernetes: schemas ---------------------------------------------------------------------


def _validate(resource: Resource) -> list[str]:
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{version} {name}: {path}: {exc.message}")
    return problems


def _core(resources: list[Resource]) -> Iterator[Resource]:
    return (r for r in resources if not r["apiVersion"].startswith(CRD_GROUP))


def test_every_manifest_validates_against_the_kubernetes_schemas(build: list[Resource]) -> None:
    problems = [problem for resource in _core(build) for problem in _validate(resource)]
    assert problems == []
    kinds = {r["kind"] for r in _core(build)}
    assert {"Deployment", "ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def test_every_base_file_validates_on_its_own() -> None:
    for path in sorted(BASE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for resource in _load_yaml_documents(path.read_text()):
            if not resource["apiVersion"].startswith(CRD_GROUP):
                assert _validate(resource) == [], path.name


def test_schema_validation_rejects_an_unknown_field_and_a_wrong_type() -> None:
    (deployment,) = [r for r in _plain_build(BASE) if r["kind"] == "Deployment"]
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    assert _validate(unknown)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "one"
    assert _validate(wrong)


# -- Kubernetes: what the schemas cannot say -------------------------------------------------


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [r["metadata"]["name"] for r in found])
    return found[0]


def _pod(resources: list[Resource]) -> dict[str, Any]:
    return _one(resources, "Deployment", "mailsyncd")["spec"]["template"]


def _container(resources: list[Resource]) -> dict[str, Any]:
    (container,) = _pod(resources)["spec"]["containers"]
    return container


def _config(resources: list[Resource]) -> tuple[dict[str, Any], Config]:
    """config.yaml of the ConfigMap, raw and loaded as the pod loads it: from the directory
    the ConfigMap is mounted as, so that ``mailboxes_files`` finds its neighbours."""
    configmap = _one(resources, "ConfigMap", GENERATED_CONFIGMAP)
    raw = yaml.safe_load(configmap["data"]["config.yaml"])
    with tempfile.TemporaryDirectory() as mounted:
        for key, text in configmap["data"].items():
            (Path(mounted) / key).write_text(text)
        # Secret files exist only in the pod; the tests below check that each one is mounted.
        return raw, load_config(Path(mounted) / "config.yaml", check_secrets=False)


def test_pod_meets_the_restricted_pod_security_standard(build: list[Resource]) -> None:
    pod = _pod(build)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == APP_UID, "the image's USER"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("automountServiceAccountToken") is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert not any("hostPath" in volume for volume in pod["volumes"])
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged") in (None, False)
        assert context.get("runAsNonRoot", True) is True
        assert context.get("runAsUser", APP_UID) != 0
    namespace = _one(build, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_probes_use_the_spec_endpoints_on_the_configured_port(build: list[Resource]) -> None:
    container = _container(build)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    raw, _ = _config(build)
    listen_port = int(raw["http"]["listen"].rpartition(":")[2])

    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        action = container[probe]["httpGet"]
        assert action["path"] == path, probe
        assert ports.get(action["port"], action["port"]) == listen_port, probe
    startup = container["startupProbe"]
    # `run` migrates before it listens: give it minutes, not the liveness probe's seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_grace_period_exceeds_the_daemons_ten_second_shutdown(build: list[Resource]) -> None:
    assert _pod(build)["spec"]["terminationGracePeriodSeconds"] >= 20


def test_container_has_requests_and_limits(build: list[Resource]) -> None:
    resources = _container(build)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_writable_paths_are_volumes_and_the_configuration_is_read_only(
    build: list[Resource],
) -> None:
    pod = _pod(build)["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(build)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[CONTAINER_TMP]["name"]]
    data = volumes[mounts["/var/lib/mailsyncd"]["name"]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data
    assert mounts["/etc/mailsyncd"]["readOnly"] is True
    assert volumes[mounts["/etc/mailsyncd"]["name"]]["configMap"]["name"] == "mailsyncd-config"


def _secret_mounts(build: list[Resource]) -> dict[PurePosixPath, str]:
    """Mount path of each Secret volume -> the Secret's name."""
    volumes = {v["name"]: v for v in _pod(build)["spec"]["volumes"]}
    out = {}
    for mount in _container(build)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert mount.get("readOnly") is True, mount
            assert secret["defaultMode"] & 0o007 == 0, "secret files are not world-readable"
            out[PurePosixPath(mount["mountPath"])] = secret["secretName"]
    return out


def _secret_key_of(path: str, mounts: dict[PurePosixPath, str]) -> tuple[str, str] | None:
    for mount, secret in mounts.items():
        if PurePosixPath(path).parent == mount:
            return secret, PurePosixPath(path).name
    return None


def test_secrets_are_mounted_as_files_and_never_passed_in_the_environment(
    build: list[Resource],
) -> None:
    container = _container(build)
    for variable in container.get("env", []):
        assert "secretKeyRef" not in variable.get("valueFrom", {}), variable["name"]
    assert not any("secretRef" in source for source in container.get("envFrom", []))
    mounts = _secret_mounts(build)
    assert mounts, "the credentials Secret is mounted"
    environment = {v["name"]: v.get("value") for v in container.get("env", [])}
    assert _secret_key_of(environment["PGSERVICEFILE"], mounts) is not None


def test_every_file_the_configuration_names_is_mounted(build: list[Resource]) -> None:
    raw, config = _config(build)
    assert "password" not in raw["database"].get("url", ""), "no secret in the ConfigMap"
    mounts = _secret_mounts(build)
    secrets = {
        r["metadata"]["name"]: {**r.get("data", {}), **r.get("stringData", {})}
        for r in build
        if r["kind"] == "Secret"
    }
    environment = {v["name"]: v.get("value") for v in _container(build).get("env", [])}
    files_named = [environment["PGSERVICEFILE"]]
    for tenant in config.tenants:
        credential = tenant.credential
        if credential.federated_token_file is not None:
            # Mounted by the AKS workload identity webhook, not by this Deployment.
            assert str(credential.federated_token_file) == FEDERATED_TOKEN_FILE
            continue
        assert credential.client_secret_env is None, "secrets come from files"
        if credential.client_secret_file is not None:
            files_named.append(str(credential.client_secret_file))
        if credential.certificate is not None:
            files_named.append(str(credential.certificate.private_key_file))
            files_named.append(str(credential.certificate.certificate_file))
    for path in files_named:
        located = _secret_key_of(path, mounts)
        assert located is not None, f"{path} is not in a mounted Secret"
        secret, key = located
        if secret in secrets:  # the overlay provides the real Secret out of band
            assert key in secrets[secret], f"{path}: key {key} missing from Secret {secret}"


def test_base_deploys_its_example_secret_and_the_overlay_never_overwrites_the_real_one() -> None:
    assert "Secret" in {r["kind"] for r in _plain_build(BASE)}
    overlay = _built(AKS_OVERLAY)
    assert "Secret" not in {r["kind"] for r in overlay}


def test_aks_overlay_uses_workload_identity_without_a_client_secret() -> None:
    overlay = _built(AKS_OVERLAY)
    account = _one(overlay, "ServiceAccount", "mailsyncd")
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert _pod(overlay)["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert _pod(overlay)["spec"]["serviceAccountName"] == "mailsyncd"
    _, config = _config(overlay)
    for tenant in config.tenants:
        assert str(tenant.credential.federated_token_file) == FEDERATED_TOKEN_FILE
        assert tenant.client_id == client_id, "the federated credential's application"


def test_service_and_service_monitor_reach_the_metrics_port(build: list[Resource]) -> None:
    service = _one(build, "Service", "mailsyncd")  # alerts.yaml expects job="mailsyncd"
    pod_labels = _pod(build)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in _container(build)["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in container_ports
    assert port["port"] == 9464

    monitor = _one(build, "ServiceMonitor", "mailsyncd")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}


def test_prometheus_rule_holds_the_groups_of_alerts_yaml(build: list[Resource]) -> None:
    rule = _one(build, "PrometheusRule", "mailsyncd")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"]
        assert group["rules"]
        for item in group["rules"]:
            assert set(item) <= {
                "alert",
                "record",
                "expr",
                "for",
                "labels",
                "annotations",
                "keep_firing_for",
            }
            assert isinstance(item["expr"], str)
            assert ("alert" in item) != ("record" in item)


def test_dashboard_configmap_holds_the_dashboard_for_the_grafana_sidecar(
    build: list[Resource],
) -> None:
    configmap = _one(build, "ConfigMap", "mailsyncd-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", KUBERNETES / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_manifests_are_fresh() -> None:
    generator = _generator()
    stale = [str(p.relative_to(ROOT)) for p in generator.stale(generator.render())]
    assert stale == [], "run `python deploy/kubernetes/generate.py`"


def test_generator_notices_a_changed_source(tmp_path: Path) -> None:
    generator = _generator()
    files_now = generator.render()
    target = tmp_path / "prometheusrule.yaml"
    target.write_text(files_now[generator.PROMETHEUS_RULE])
    assert generator.stale({target: files_now[generator.PROMETHEUS_RULE]}) == []
    changed = ALERTS.read_text().replace("severity: critical", "severity: page", 1)
    assert generator.stale({target: generator.prometheus_rule(changed)}) == [target]


def test_every_alert_links_an_absolute_runbook_url_built_from_one_base_url(
    build: list[Resource],
) -> None:
    generator = _generator()
    base = urlsplit(generator.RUNBOOK_BASE_URL)
    assert base.scheme == "https"
    assert base.netloc
    assert not base.fragment
    rule = _one(build, "PrometheusRule", "mailsyncd")
    for groups in (rule["spec"]["groups"], yaml.safe_load(ALERTS.read_text())["groups"]):
        alerts = [item for group in groups for item in group["rules"] if "alert" in item]
        assert alerts
        for item in alerts:
            url = item["annotations"]["runbook_url"]
            assert url == f"{generator.RUNBOOK_BASE_URL}#{item['alert'].lower()}", url


def test_changing_the_runbook_base_url_rewrites_only_the_runbook_lines() -> None:
    generator = _generator()
    text = ALERTS.read_text()
    moved = generator.with_runbook_urls(text, "https://docs.example.test/ops.html")
    changed = [
        (before, after)
        for before, after in zip(text.splitlines(), moved.splitlines(), strict=True)
        if before != after
    ]
    alerts = [item for group in yaml.safe_load(text)["groups"] for item in group["rules"]]
    assert len(changed) == len([item for item in alerts if "alert" in item])
    assert all(
        after.strip().startswith("runbook_url: https://docs.example.test/ops.html#")
        for _, after in changed
    )
    assert [
        item["annotations"]["runbook_url"] for item in yaml.safe_load(moved)["groups"][0]["rules"]
    ] == [f"https://docs.example.test/ops.html#{item['alert'].lower()}" for item in alerts]
    # A relative link, as an editor may write it, is stale until the generator has run.
    relative = text.replace(generator.RUNBOOK_BASE_URL, "docs/operations.md", 1)
    assert generator.with_runbook_urls(relative) == text


def _generator_entry(directory: Path) -> dict[str, Any]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    (entry,) = [
        e for e in kustomization.get("configMapGenerator", []) if e["name"] == GENERATED_CONFIGMAP
    ]
    return entry


def test_configuration_is_a_generated_configmap_so_that_a_change_rolls_the_pods(
    tmp_path: Path,
) -> None:
    for directory in BUILDS.values():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        assert not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash")
        assert not _generator_entry(directory).get("options", {}).get("disableNameSuffixHash")
    if _kustomize_command() is None:
        pytest.skip("no kustomize on PATH (kustomize or kubectl): the hash is kustomize's")
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy_root)

    def names(directory: Path) -> tuple[str, str]:
        built = _kustomize_build(directory)
        assert built is not None
        (configmap,) = [
            r["metadata"]["name"]
            for r in built
            if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith(GENERATED_CONFIGMAP)
        ]
        volumes = _pod(built)["spec"]["volumes"]
        (mounted,) = [v["configMap"]["name"] for v in volumes if "configMap" in v]
        return configmap, mounted

    for overlay in (copy_root / "base", copy_root / "overlays" / "aks-workload-identity"):
        before, mounted = names(overlay)
        assert HASHED.match(before), before
        assert mounted == before, "the Deployment names the generated ConfigMap"
        for changed in ("config.yaml", "mailboxes.yaml"):
            path = copy_root / "base" / "config" / changed
            if overlay.name != "base" and changed == "config.yaml":
                path = overlay / "config" / changed
            path.write_text(path.read_text() + "# changed\n")
            after, mounted = names(overlay)
            assert after != before, f"{changed}: same ConfigMap name, the pods would not roll"
            assert mounted == after
            before = after


def test_configmap_holds_the_mailbox_list_in_its_own_file_named_by_mailboxes_files(
    build: list[Resource],
) -> None:
    container = _container(build)
    config_file = PurePosixPath(container["args"][container["args"].index("-c") + 1])
    assert config_file == CONFIG_DIR / "config.yaml"
    configmap = _one(build, "ConfigMap", GENERATED_CONFIGMAP)
    assert set(configmap["data"]) == {"config.yaml", "mailboxes.yaml"}
    raw, config = _config(build)
    assert "mailboxes" not in raw, "the mailboxes live in mailboxes.yaml"
    assert raw["mailboxes_files"] == ["mailboxes.yaml"]
    listed = yaml.safe_load(configmap["data"]["mailboxes.yaml"])
    assert isinstance(listed, list)
    assert listed
    assert [m.address for m in config.mailboxes] == [entry["address"] for entry in listed]


def test_deployment_runs_two_replicas_that_share_postgresql_and_roll_one_at_a_time(
    build: list[Resource],
) -> None:
    deployment = _one(build, "Deployment", "mailsyncd")
    assert deployment["spec"]["replicas"] == 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    # The new pod joins (and takes its share of leases) before an old one hands its back.
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = _one(build, "PodDisruptionBudget", "mailsyncd")
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    # Replicas share mailboxes through leases in PostgreSQL; SQLite runs exactly one replica.
    raw, _ = _config(build)
    assert raw["database"]["url"].startswith("postgresql+psycopg:")
    pod = _pod(build)
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in spread:
        assert (
            constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        )
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", "a one-node cluster still runs"


def test_disruption_budget_and_network_policy_select_the_pod(build: list[Resource]) -> None:
    pod_labels = _pod(build)["metadata"]["labels"]
    budget = _one(build, "PodDisruptionBudget", "mailsyncd")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    replicas = _one(build, "Deployment", "mailsyncd")["spec"]["replicas"]
    # A budget that a single replica cannot satisfy would block every node drain.
    assert "maxUnavailable" in budget["spec"] or budget["spec"]["minAvailable"] < replicas
    policy = _one(build, "NetworkPolicy", "mailsyncd")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]


def test_network_policy_allows_egress_to_dns_identity_imap_and_database_only(
    build: list[Resource],
) -> None:
    policy = _one(build, "NetworkPolicy", "mailsyncd")
    allowed = set()
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), "a rule without ports would allow every port"
        assert rule.get("to"), "a rule without peers would allow every destination"
        allowed |= {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (993, "TCP"), (5432, "TCP")}
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                assert "169.254.0.0/16" in peer["ipBlock"]["except"], "no cloud metadata service"
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9464, "protocol": "TCP"}]


def _egress_to(policy: Resource, peer_matches: Any) -> set[tuple[int, str]]:
    """Ports the policy opens towards peers for which ``peer_matches(peer)`` holds."""
    return {
        (port["port"], port.get("protocol", "TCP"))
        for rule in policy["spec"]["egress"]
        if any(peer_matches(peer) for peer in rule["to"])
        for port in rule["ports"]
    }


def test_network_policy_allows_dns_to_kube_dns_and_node_local_dns_and_nothing_else_link_local(
    build: list[Resource],
) -> None:
    policy = _one(build, "NetworkPolicy", "mailsyncd")
    dns = {(53, "UDP"), (53, "TCP")}
    kube_dns = _egress_to(
        policy,
        lambda peer: peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"},
    )
    assert kube_dns == dns
    # NodeLocal DNSCache answers on 169.254.20.10 on each node, outside any pod selector.
    node_local = _egress_to(
        policy, lambda peer: peer.get("ipBlock", {}).get("cidr") == NODE_LOCAL_DNS
    )
    assert node_local == dns
    link_local = [
        peer["ipBlock"]["cidr"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if peer.get("ipBlock", {}).get("cidr", "").startswith("169.254.")
    ]
    assert link_local == [NODE_LOCAL_DNS], "the metadata endpoint 169.254.169.254 stays closed"


# -- compose ---------------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    resource = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(resource.read_text(encoding="utf-8"))


def _compose_errors(document: Any) -> list[str]:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _compose_errors(compose) == []


def test_compose_schema_rejects_a_malformed_service(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["mailsyncd"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["grafana"]["helthcheck"] = {"test": ["CMD", "true"]}
    assert len(_compose_errors(broken)) >= 2


def test_compose_services_have_health_checks_and_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mailsyncd", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    depends = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert depends["mailsyncd"] == {"postgres": "service_healthy"}
    assert depends["prometheus"] == {"mailsyncd": "service_started"}
    assert depends["grafana"] == {"prometheus": "service_healthy"}


def test_compose_runs_mailsyncd_as_the_image_does_in_kubernetes(compose: dict[str, Any]) -> None:
    mailsyncd = compose["services"]["mailsyncd"]
    assert mailsyncd["read_only"] is True
    assert mailsyncd["tmpfs"] == [CONTAINER_TMP]
    assert mailsyncd["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in mailsyncd["security_opt"]
    assert mailsyncd["build"]["context"] == "../.."
    assert (
        COMPOSE_DIR / mailsyncd["build"]["context"] / mailsyncd["build"]["dockerfile"]
    ).is_file()
    assert mailsyncd["stop_signal"] == "SIGTERM"


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount written as ./ or ../."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def test_compose_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} for {target}"
    for name, secret in compose["secrets"].items():
        # The real file is the operator's copy of its example (git ignores it).
        assert _example(COMPOSE_DIR / secret["file"]).is_file(), name


def _example(path: Path) -> Path:
    return path.with_name(f"{path.name}.example")


def _git_ignored(path: Path) -> bool:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    result = subprocess.run(
        [git, "check-ignore", "--no-index", "--quiet", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_compose_secrets_are_git_ignored_and_only_their_examples_are_kept(
    compose: dict[str, Any],
) -> None:
    for name, secret in compose["secrets"].items():
        real = (COMPOSE_DIR / secret["file"]).resolve()
        assert real.parent == COMPOSE_DIR / "secrets", name
        assert _git_ignored(real), f"{name}: {real} would be committed"
        assert not _git_ignored(_example(real)), f"{name}: the example must be in git"
    # Whatever an operator adds there is a secret too.
    assert _git_ignored(COMPOSE_DIR / "secrets" / "tenant-b-certificate.pem")
    assert not _git_ignored(COMPOSE_DIR / "mailsyncd.yaml"), "the configuration is no secret"


def test_compose_provisions_prometheus_and_grafana_from_the_repository(
    compose: dict[str, Any],
) -> None:
    prometheus = _binds(compose["services"]["prometheus"])
    assert ALERTS in prometheus.values()
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "mailsyncd"  # the job alerts.yaml expects
    assert job["static_configs"] == [{"targets": ["mailsyncd:9464"]}]
    rules_target = next(t for t, s in prometheus.items() if s == ALERTS)
    assert any(PurePosixPath(rules_target).match(g) for g in config["rule_files"])

    grafana = _binds(compose["services"]["grafana"])
    assert DASHBOARD in grafana.values()
    provisioning = grafana["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mailsyncd.yaml").read_text())[
        "providers"
    ]
    dashboard_target = next(t for t, s in grafana.items() if s == DASHBOARD)
    assert PurePosixPath(dashboard_target).parent == PurePosixPath(provider["options"]["path"])


def test_compose_configuration_is_valid_and_names_only_mounted_secrets(
    compose: dict[str, Any],
) -> None:
    mailsyncd = compose["services"]["mailsyncd"]
    config_file = _binds(mailsyncd)["/etc/mailsyncd/config.yaml"]
    config = config_from_mapping(yaml.safe_load(config_file.read_text()), check_secrets=False)
    mounted = {f"/run/secrets/{name}" for name in mailsyncd["secrets"]}
    named = {str(t.credential.client_secret_file) for t in config.tenants}
    named.add(mailsyncd["environment"]["PGSERVICEFILE"])
    assert named <= mounted, named - mounted
    # The examples of the service file and of the database's password file agree.
    service_file = _example(COMPOSE_DIR / compose["secrets"]["pg_service.conf"]["file"]).read_text()
    password = (
        _example(COMPOSE_DIR / compose["secrets"]["postgres-password"]["file"]).read_text().strip()
    )
    assert f"password={password}" in service_file.splitlines()
