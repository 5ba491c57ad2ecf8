"""deploy/ as data: every manifest parses, has the shape of its kind, and agrees with the code.

No Docker engine or Kubernetes API runs here, so the Dockerfiles, the compose file and the
Kubernetes manifests are parsed and checked: schemas per kind, references between resources,
probes against the UI's port and health path, the settings the code reads, the CLI commands the
manifests run, and the torch/Ray/Python pins the images are built with. Each family of checks
also runs on a broken copy, to show that it catches what it is meant to catch.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

from clinic.settings import Settings, SettingsError
from tests.deploy import checks
from tests.deploy.manifests import (
    COMPOSE,
    DEPLOY,
    DOCKERFILES,
    ENV_EXAMPLE,
    K8S,
    REPO,
    Document,
    deploy_yaml_files,
    dockerfile_args,
    dockerignore_patterns,
    k8s_resources,
    load_yaml_documents,
    of_kind,
    parse_dockerfile,
    parse_env_file,
    pyproject_pin,
    read_yaml,
    settings_named_in,
    settings_read_by_code,
)
from tests.deploy.schemas import schema_errors

PLACEHOLDER = "REPLACE_ME"
A_REAL_SECRET = "0123456789abcdef0123456789abcdef"
NEVER_IN_THE_BUILD_CONTEXT = (
    ".clinic/clinic.db",
    ".clinic/blobs/ab/abcdef.npy",
    ".venv/bin/python",
    ".git/HEAD",
    "deploy/settings.production.env",
    "deploy/secrets/postgres_password",
    "test-artifacts/case.png",
    "tests/conftest.py",
)


@cache
def resources() -> tuple[Document, ...]:
    return tuple(k8s_resources())


def kustomized() -> list[Document]:
    """The resources ``kubectl apply -k deploy/k8s`` creates (one-off jobs/ left out)."""
    (kustomization,) = read_yaml(K8S / "kustomization.yaml")
    return k8s_resources([K8S / name for name in kustomization["resources"]])


def fresh(kind: str, name: str | None = None) -> Document:
    """A deep copy of one shipped resource, to break in a test."""
    found = [r for r in of_kind(resources(), kind) if name in (None, r["metadata"]["name"])]
    assert found, f"no {kind} {name or ''} in deploy/k8s"
    return copy.deepcopy(found[0])


def compose() -> Document:
    (document,) = read_yaml(COMPOSE)
    return document


def ignored_by_git() -> list[str]:
    return [line.strip() for line in (DEPLOY / ".gitignore").read_text().splitlines()]


@cache
def cli() -> checks.CliCommand:
    """The ``clinic`` command tree as Typer builds it (imports the CLI: about a second)."""
    from clinic.cli.main import app

    return typer.main.get_command(app)


# --- parsing ------------------------------------------------------------------------------------


def test_deploy_holds_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in deploy_yaml_files()}
    assert {"compose.yaml", "k8s/kustomization.yaml", "k8s/raycluster.yaml"} <= names
    assert all(p.is_file() for p in (*DOCKERFILES, ENV_EXAMPLE, REPO / ".dockerignore"))


@pytest.mark.parametrize(
    "path", deploy_yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix()
)
def test_every_yaml_file_parses_into_mappings(path: Path) -> None:
    assert read_yaml(path)


def test_a_yaml_stream_with_a_non_mapping_document_is_refused() -> None:
    with pytest.raises(ValueError, match="not a mapping"):
        load_yaml_documents("apiVersion: v1\n---\n- a list\n")


# --- Kubernetes: schemas per kind -----------------------------------------------------------------


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_k8s_resources_have_the_shape_of_their_kind(resource: Document) -> None:
    assert schema_errors(resource) == []


def _ray_worker(cluster: Document) -> dict[str, Any]:
    container: dict[str, Any] = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"
    ][0]
    return container


def _ui_pod(deployment: Document) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


BREAKAGES: list[tuple[str, Callable[[Document], None], str]] = [
    ("RayCluster", lambda r: _ray_worker(r)["resources"].pop("limits"), "limits"),
    ("RayCluster", lambda r: _ray_worker(r).pop("envFrom"), "envFrom"),
    ("RayCluster", lambda r: r["spec"]["headGroupSpec"]["rayStartParams"].update(x=1), "string"),
    ("Deployment", lambda r: _ui_pod(r)["securityContext"].update(runAsNonRoot=False), "True"),
    ("Deployment", lambda r: _ui_pod(r)["containers"][0].update(image="clinic:latest"), "latest"),
    ("Deployment", lambda r: _ui_pod(r)["containers"][0].pop("readinessProbe"), "readiness"),
    ("Job", lambda r: r["spec"]["template"]["spec"].pop("restartPolicy"), "restartPolicy"),
    ("Job", lambda r: r["spec"]["template"]["spec"]["containers"][0].pop("command"), "command"),
    ("Service", lambda r: r.update(apiVersion="v2"), "apiVersion"),
    ("Secret", lambda r: r["metadata"].update(name="Not_A_Name"), "name"),
]


@pytest.mark.parametrize(("kind", "breakage", "expected"), BREAKAGES)
def test_schemas_reject_broken_copies(
    kind: str, breakage: Callable[[Document], None], expected: str
) -> None:
    resource = fresh(kind)
    breakage(resource)
    errors = schema_errors(resource)
    assert errors and any(expected in error for error in errors), errors


def test_an_unknown_kind_needs_a_schema_first() -> None:
    assert schema_errors({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})


# --- Kubernetes: resources agree with each other ------------------------------------------------


def test_ui_probes_hit_the_health_path_on_the_port_the_ui_listens_on() -> None:
    deployment = fresh("Deployment", "clinic-ui")
    assert checks.ui_probe_problems(deployment) == []
    probes = [k for k in deployment["spec"]["template"]["spec"]["containers"][0] if "Probe" in k]
    assert {"readinessProbe", "livenessProbe"} <= set(probes)


def test_a_probe_on_the_wrong_path_or_port_is_caught() -> None:
    deployment = fresh("Deployment", "clinic-ui")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["path"] = "/healthz"
    container["args"][container["args"].index("--port") + 1] = "9000"
    problems = checks.ui_probe_problems(deployment)
    assert any("/healthz" in p for p in problems)
    assert any("--port 9000" in p for p in problems)


def test_services_select_the_ui_pods_and_target_a_declared_port() -> None:
    assert checks.service_problems(resources()) == []


def test_a_service_whose_selector_matches_nothing_is_caught() -> None:
    service = fresh("Service", "clinic-ui")
    service["spec"]["selector"]["app.kubernetes.io/component"] = "web"
    service["spec"]["ports"][0]["targetPort"] = "metrics"
    others = [r for r in resources() if r["kind"] != "Service"]
    problems = checks.service_problems([*others, service])
    assert any("matches no Deployment" in p for p in problems)
    assert any("'metrics' not declared" in p for p in problems)


def test_config_secrets_claims_and_clusters_that_pods_name_exist() -> None:
    job = of_kind(k8s_resources([K8S / "jobs" / "cohort-score.rayjob.yaml"]), "RayJob")
    assert checks.reference_problems([*resources(), *job]) == []


def test_a_dangling_reference_is_caught() -> None:
    cluster = fresh("RayCluster")
    _ray_worker(cluster)["envFrom"][1]["secretRef"]["name"] = "clinic-secret"
    others = [r for r in resources() if r["kind"] != "RayCluster"]
    assert checks.reference_problems([*others, cluster]) == [
        "RayCluster/clinic-ray/cpu: Secret/clinic-secret does not exist"
    ]


def test_every_pod_mounts_the_shared_claim_at_clinic_home() -> None:
    assert checks.home_mount_problems(resources()) == []
    (claim,) = of_kind(resources(), "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # UI, Job and every Ray node


def test_a_pod_without_clinic_home_is_caught() -> None:
    deployment = fresh("Deployment", "clinic-ui")
    _ui_pod(deployment)["containers"][0]["volumeMounts"][0]["mountPath"] = "/data"
    others = [r for r in resources() if r["kind"] != "Deployment"]
    assert checks.home_mount_problems([*others, deployment]) == [
        "Deployment/clinic-ui: no claim mounted at CLINIC_HOME (/var/lib/clinic)"
    ]


def test_the_ray_cluster_runs_the_images_ray_and_gpus_on_the_cuda_image() -> None:
    (cluster,) = of_kind(resources(), "RayCluster")
    assert checks.ray_cluster_problems(cluster, ray_version()) == []
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert "nvidia.com/gpu" in checks._limits(groups["gpu"])  # the optional GPU group


def test_a_ray_version_or_gpu_image_mismatch_is_caught() -> None:
    cluster = fresh("RayCluster")
    cluster["spec"]["rayVersion"] = "2.0.0"
    gpu = cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    gpu["image"] = gpu["image"].replace("clinic-cuda", "clinic")
    problems = checks.ray_cluster_problems(cluster, ray_version())
    assert any("rayVersion 2.0.0" in p for p in problems)
    assert any("CUDA image" in p for p in problems)


def test_kustomization_lists_every_manifest(tmp_path: Path) -> None:
    (kustomization,) = read_yaml(K8S / "kustomization.yaml")
    assert checks.kustomization_problems(kustomization, K8S) == []
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / "k8s" / "forgotten.yaml").write_text("apiVersion: v1\n")
    assert checks.kustomization_problems(kustomization, tmp_path / "k8s") == [
        "forgotten.yaml: not listed in kustomization.yaml"
    ]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_set() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = load_yaml_documents(result.stdout)
    assert len(built) == len(kustomized())
    namespaced = [r for r in built if r["kind"] != "Namespace"]
    assert {r["metadata"]["namespace"] for r in namespaced} == {"clinic"}


# --- compose --------------------------------------------------------------------------------------


def test_compose_services_dependencies_volumes_and_secrets_resolve() -> None:
    document = compose()
    assert checks.compose_problems(document, COMPOSE.parent, ignored_by_git()) == []
    assert checks.migration_order_problems(document) == []
    assert checks.ray_address_problems(document) == []
    assert checks.clinic_volume_problems(document) == []
    assert {"postgres", "migrate", "ui", "worker", "ray-head"} <= set(document["services"])


def test_compose_runs_postgresql_18_with_pgvector() -> None:
    postgres = compose()["services"]["postgres"]
    assert postgres["image"] == "pgvector/pgvector:pg18"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]  # a secret file instead
    assert any(str(v).endswith(":/var/lib/postgresql") for v in postgres["volumes"])


COMPOSE_BREAKAGES: list[tuple[Callable[[Document], None], str]] = [
    (lambda c: c["services"]["ui"]["depends_on"].update(cache={}), "unknown service cache"),
    (
        lambda c: c["services"]["ui"]["depends_on"].update(
            migrate={"condition": "service_healthy"}
        ),
        "no healthcheck",
    ),
    (lambda c: c["services"]["ui"]["volumes"].append("scratch:/tmp"), "volume scratch"),
    (
        lambda c: c["services"]["ui"]["environment"].update(CLINIC_AUDIT_KEY="x" * 32),
        "CLINIC_AUDIT_KEY written",
    ),
    (lambda c: c["services"]["ui"].pop("healthcheck"), "without a healthcheck"),
    (lambda c: c["services"]["migrate"].update(restart="always"), "which restarts"),
    (lambda c: c["services"]["postgres"].update(image="pgvector/pgvector"), "not pinned"),
]


@pytest.mark.parametrize(("breakage", "expected"), COMPOSE_BREAKAGES)
def test_compose_checks_catch_broken_copies(
    breakage: Callable[[Document], None], expected: str
) -> None:
    document = compose()
    breakage(document)
    problems = checks.compose_problems(document, COMPOSE.parent, ignored_by_git())
    assert any(expected in p for p in problems), problems


def test_a_service_starting_before_migrations_or_a_wrong_ray_address_is_caught() -> None:
    document = compose()
    document["services"]["ui"]["depends_on"] = {"postgres": {"condition": "service_healthy"}}
    document["services"]["worker"]["environment"]["CLINIC_RAY_ADDRESS"] = "ray-head:10001"
    assert checks.migration_order_problems(document) == ["ui may start before migrate completed"]
    assert checks.ray_address_problems(document) == [
        "worker: ray-head:10001 is not a Ray head's GCS port"
    ]


# --- settings: what the manifests set is what the code reads ------------------------------------


def test_settings_are_collected_from_string_literals_only(tmp_path: Path) -> None:
    (tmp_path / "clinic").mkdir()
    (tmp_path / "clinic" / "a.py").write_text(
        'X = env.get("CLINIC_ALPHA")\nNAME = "CLINIC_DEID_1"\n"""Uses CLINIC_GAMMA."""\n'
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "b.py").write_text("KEY = 'CLINIC_BETA'\n")
    (tmp_path / "migrations").mkdir()
    assert settings_read_by_code(tmp_path) == {"CLINIC_ALPHA", "CLINIC_BETA"}


def test_the_code_reads_the_documented_core_settings() -> None:
    core = {"CLINIC_HOME", "CLINIC_DATABASE_URL", "CLINIC_PSEUDONYM_KEY", "CLINIC_AUDIT_KEY"}
    assert (
        core | {"CLINIC_MODE", "CLINIC_USER", "CLINIC_UI_IDLE_MINUTES"} <= settings_read_by_code()
    )


def test_every_setting_the_code_reads_is_in_the_production_example() -> None:
    example = parse_env_file(ENV_EXAMPLE.read_text())
    assert sorted(settings_read_by_code() - set(example)) == []
    assert example["CLINIC_MODE"] == "production"


def settings_files() -> list[Path]:
    return [*deploy_yaml_files(), ENV_EXAMPLE, *DOCKERFILES, DEPLOY / "README.md"]


@pytest.mark.parametrize("path", settings_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_deploy_files_name_only_settings_the_code_reads(path: Path) -> None:
    assert sorted(settings_named_in(path.read_text()) - settings_read_by_code()) == []


def test_a_misspelt_setting_is_caught() -> None:
    text = ENV_EXAMPLE.read_text().replace("CLINIC_AUDIT_KEY=", "CLINIC_AUDIT_KEYS=")
    assert settings_named_in(text) - settings_read_by_code() == {"CLINIC_AUDIT_KEYS"}
    missing = settings_read_by_code() - set(parse_env_file(text))
    assert missing == {"CLINIC_AUDIT_KEY"}


def _with_real_secrets(values: dict[str, str]) -> dict[str, str]:
    return {key: value.replace(PLACEHOLDER, A_REAL_SECRET) for key, value in values.items()}


def test_the_example_cannot_start_until_its_secrets_are_replaced() -> None:
    example = parse_env_file(ENV_EXAMPLE.read_text())
    assert {k for k, v in example.items() if PLACEHOLDER in v} == checks.SECRET_SETTINGS
    with pytest.raises(SettingsError, match="shorter than"):
        Settings.from_env(example).check()
    settings = Settings.from_env(_with_real_secrets(example))
    settings.check()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.home == Path("/var/lib/clinic")


def test_kubernetes_settings_cover_the_example_and_keep_secrets_in_secrets() -> None:
    example = parse_env_file(ENV_EXAMPLE.read_text())
    (configmap,) = of_kind(resources(), "ConfigMap")
    secrets = {k for s in of_kind(resources(), "Secret") for k in s["stringData"]}
    assert set(configmap["data"]) | secrets == set(example)
    assert not checks.SECRET_SETTINGS & set(configmap["data"])
    assert secrets >= checks.SECRET_SETTINGS


def test_the_ray_head_where_drivers_run_gets_every_setting_but_only_once_edited() -> None:
    (cluster,) = of_kind(resources(), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    values = checks.pod_settings(head, resources())
    assert set(parse_env_file(ENV_EXAMPLE.read_text())) <= set(values)
    with pytest.raises(SettingsError):
        Settings.from_env(values).check()
    Settings.from_env(_with_real_secrets(values)).check()


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[Any]:
    return list(parse_dockerfile(path.read_text()))


def ray_version() -> str:
    versions = {dockerfile_args(dockerfile(path))["RAY_VERSION"] for path in DOCKERFILES}
    assert len(versions) == 1, f"the images pin different Ray versions: {versions}"
    return versions.pop()


@pytest.mark.parametrize(
    ("path", "index"),
    [(DOCKERFILES[0], "/whl/cpu"), (DOCKERFILES[1], "/whl/cu12")],
    ids=["cpu", "cuda"],
)
def test_dockerfiles_are_multi_stage_non_root_healthchecked_and_pinned(
    path: Path, index: str
) -> None:
    assert (
        checks.dockerfile_problems(
            dockerfile(path), torch_pin=pyproject_pin("torch"), torch_index=index
        )
        == []
    )


def test_both_images_use_python_3_11_and_the_same_ray() -> None:
    cpu, cuda = (path.read_text() for path in DOCKERFILES)
    assert dockerfile_args(dockerfile(DOCKERFILES[0]))["PYTHON_VERSION"] == "3.11"
    assert "python3.11 -m venv" in cuda and "python:${PYTHON_VERSION}-slim" in cpu
    assert ray_version()


DOCKERFILE_BREAKAGES: list[tuple[Callable[[str], str], str]] = [
    (lambda t: t + "USER root\n", "USER root"),
    (lambda t: t + "USER 0:0\n", "USER 0"),
    (
        lambda t: t.replace('"torch==${TORCH_VERSION}"', '"torch==${TORCH_VERSION}" torchvision'),
        "torchvision",
    ),
    (lambda t: t.replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0"), "TORCH_VERSION"),
    (lambda t: t + "RUN pip install torch==2.12.0\n", "another version"),
    (lambda t: t.replace("HEALTHCHECK", "LABEL healthcheck=none\n# "), "HEALTHCHECK"),
    (lambda t: t.replace("/_stcore/health", "/health"), "health path"),
    (
        lambda t: t.replace(" AS runtime", "").replace("COPY --from=builder", "COPY"),
        "copies nothing",
    ),
]


@pytest.mark.parametrize(("breakage", "expected"), DOCKERFILE_BREAKAGES)
def test_dockerfile_checks_catch_broken_copies(
    breakage: Callable[[str], str], expected: str
) -> None:
    broken = breakage(DOCKERFILES[0].read_text())
    problems = checks.dockerfile_problems(
        parse_dockerfile(broken), torch_pin=pyproject_pin("torch"), torch_index="/whl/cpu"
    )
    assert any(expected in p for p in problems), problems


def test_a_line_that_is_not_an_instruction_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Dockerfile instruction"):
        parse_dockerfile("FROM python:3.11-slim\npip install torch\n")


def test_build_context_holds_the_code_and_never_data_keys_or_environments() -> None:
    for path in DOCKERFILES:
        problems = checks.build_context_problems(
            dockerfile(path), dockerignore_patterns(), NEVER_IN_THE_BUILD_CONTEXT
        )
        assert problems == []


def test_a_permissive_dockerignore_is_caught() -> None:
    patterns = [p for p in dockerignore_patterns() if p != "*"]
    problems = checks.build_context_problems(
        dockerfile(DOCKERFILES[0]), patterns, NEVER_IN_THE_BUILD_CONTEXT
    )
    assert ".clinic/clinic.db: would be sent to the builder" in problems
    assert "deploy/settings.production.env: would be sent to the builder" in problems


# --- the commands the manifests run exist ---------------------------------------------------------


def manifest_invocations() -> list[list[str]]:
    """Every ``clinic …`` argv in compose, the Kubernetes manifests and deploy/README.md."""
    found: list[list[str]] = []
    for service in compose()["services"].values():
        found += checks.clinic_invocations([shlex.join(map(str, service.get("command", [])))])
    for resource in k8s_resources():
        for _, pod in checks.pod_specs(resource):
            for container in pod["containers"]:
                found += checks.clinic_invocations([shlex.join(checks.command_line(container))])
        if resource["kind"] == "RayJob":
            found.append(shlex.split(resource["spec"]["entrypoint"]))
    found += checks.clinic_invocations(checks.shell_code_lines((DEPLOY / "README.md").read_text()))
    return found


def test_the_clinic_commands_in_manifests_and_readme_exist() -> None:
    invocations = manifest_invocations()
    commands = {" ".join(argv[:3]) for argv in invocations}
    assert {"clinic db upgrade", "clinic ui --host", "clinic cohort score"} <= commands
    problems = [p for argv in invocations for p in checks.cli_problems(argv, cli())]
    assert problems == []


def test_a_misspelt_command_or_option_is_caught() -> None:
    assert checks.cli_problems(["clinic", "cohort", "scroe", "demo"], cli()) == [
        ("unknown command", "cohort scroe")
    ]
    assert checks.cli_problems(["clinic", "ui", "--hots", "0.0.0.0"], cli()) == [
        ("unknown option", "ui --hots")
    ]
    assert checks.cli_problems(["clinic", "db"], cli()) == [("incomplete command", "db")]
    assert checks.cli_problems(["clinic", "cohort", "score", "x", "--engien", "ray"], cli()) == [
        ("unknown option", "cohort score --engien")
    ]
