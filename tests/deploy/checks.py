"""Consistency checks over deploy/: each returns the problems it finds ([] when there are none).

Returning problems rather than asserting lets the tests show both halves: the shipped manifests
have none, and a deliberately broken copy has the expected one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tests.deploy.manifests import Document, Instruction, dockerfile_args, dockerignore_allows

UI_HEALTH_PATH = "/_stcore/health"
SECRET_SETTINGS = frozenset(
    {"CLINIC_PSEUDONYM_KEY", "CLINIC_AUDIT_KEY", "CLINIC_PASSWORD", "CLINIC_DATABASE_URL"}
)
DEPENDS_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)


# --- Kubernetes -------------------------------------------------------------------------------


def pod_specs(resource: Document) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, pod spec)`` of every pod template in a Deployment, Job or RayCluster."""
    spec = resource.get("spec", {})
    name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
    if resource.get("kind") in {"Deployment", "Job"}:
        yield name, spec["template"]["spec"]
    elif resource.get("kind") == "RayCluster":
        yield f"{name}/head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield f"{name}/{group['groupName']}", group["template"]["spec"]


def command_line(container: Mapping[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``argv``."""
    for index, token in enumerate(argv):
        if token == option and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(option + "="):
            return token.partition("=")[2]
    return None


def container_port(container: Mapping[str, Any], port: str | int) -> int | None:
    """A probe's or Service's port resolved against the container's ports (by name or number)."""
    for declared in container.get("ports", []):
        if port in (declared.get("name"), declared["containerPort"]):
            return int(declared["containerPort"])
    return None


def ui_probe_problems(deployment: Document) -> list[str]:
    """Every probe of the UI hits the health path on the port ``clinic ui --port`` listens on."""
    problems: list[str] = []
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        listen = option_value(command_line(container), "--port")
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name)
            if probe is None:
                continue
            http = probe.get("httpGet", {})
            if http.get("path") != UI_HEALTH_PATH:
                problems.append(f"{probe_name} path {http.get('path')!r} is not {UI_HEALTH_PATH}")
            port = container_port(container, http.get("port", ""))
            if port is None or str(port) != listen:
                problems.append(f"{probe_name} port {http.get('port')!r} is not --port {listen}")
    return problems


def service_problems(resources: Sequence[Document]) -> list[str]:
    """Each Service selects a Deployment's pods and targets a port its containers declare."""
    problems: list[str] = []
    deployments = [r for r in resources if r["kind"] == "Deployment"]
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not _subset(deployment["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"Deployment/{deployment['metadata']['name']}: selector ⊄ pod labels")
    for service in (r for r in resources if r["kind"] == "Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        targets = [
            d for d in deployments if _subset(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        if not targets:
            problems.append(f"Service/{name}: selector {selector} matches no Deployment's pods")
        containers = [c for d in targets for c in d["spec"]["template"]["spec"]["containers"]]
        for port in service["spec"]["ports"]:
            if not any(container_port(c, port["targetPort"]) for c in containers):
                problems.append(f"Service/{name}: targetPort {port['targetPort']!r} not declared")
    return problems


def _subset(small: Mapping[str, Any], large: Mapping[str, Any]) -> bool:
    return all(large.get(key) == value for key, value in small.items())


def reference_problems(resources: Sequence[Document]) -> list[str]:
    """ConfigMaps, Secrets, claims and clusters that pods and jobs name all exist."""
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    problems: list[str] = []
    for resource in resources:
        for where, pod in pod_specs(resource):
            for kind, name in _pod_references(pod):
                if (kind, name) not in names:
                    problems.append(f"{where}: {kind}/{name} does not exist")
        if resource["kind"] == "RayJob":
            cluster = resource["spec"]["clusterSelector"]["ray.io/cluster"]
            if ("RayCluster", cluster) not in names:
                problems.append(f"RayJob/{resource['metadata']['name']}: no RayCluster {cluster}")
    return problems


def _pod_references(pod: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for container in pod["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"]
            if "secretRef" in source:
                yield "Secret", source["secretRef"]["name"]
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]


def pod_settings(pod: Mapping[str, Any], resources: Sequence[Document]) -> dict[str, str]:
    """The ``CLINIC_*`` environment a pod's first container gets from its envFrom sources."""
    by_name = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    values: dict[str, str] = {}
    for source in pod["containers"][0].get("envFrom", []):
        if "configMapRef" in source:
            values.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            values.update(by_name[("Secret", source["secretRef"]["name"])]["stringData"])
    for variable in pod["containers"][0].get("env", []):
        values[variable["name"]] = str(variable.get("value", ""))
    return values


def home_mount_problems(resources: Sequence[Document]) -> list[str]:
    """Every pod mounts a PersistentVolumeClaim at the CLINIC_HOME its settings name."""
    problems: list[str] = []
    for resource in resources:
        for where, pod in pod_specs(resource):
            home = pod_settings(pod, resources).get("CLINIC_HOME")
            claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            mounts = {
                m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])
            }
            if home is None or mounts.get(home) not in claims:
                problems.append(f"{where}: no claim mounted at CLINIC_HOME ({home})")
    return problems


def ray_cluster_problems(cluster: Document, ray_version: str) -> list[str]:
    """Version pinned like the images; GPU groups ask for GPUs and run the CUDA image."""
    spec = cluster["spec"]
    problems: list[str] = []
    if spec["rayVersion"] != ray_version:
        problems.append(f"rayVersion {spec['rayVersion']} is not the images' Ray {ray_version}")
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        if not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"group {name}: replicas outside [minReplicas, maxReplicas]")
        for container in group["template"]["spec"]["containers"]:
            limits = container["resources"]["limits"]
            wants_gpu = "nvidia.com/gpu" in limits
            if wants_gpu != ("cuda" in container["image"]):
                problems.append(f"group {name}: GPU limit and CUDA image must go together")
            if (
                wants_gpu
                and container["resources"]["requests"].get("nvidia.com/gpu")
                != limits["nvidia.com/gpu"]
            ):
                problems.append(f"group {name}: GPU requests must equal limits")
    if not any("nvidia.com/gpu" not in _limits(g) for g in spec["workerGroupSpecs"]):
        problems.append("no CPU worker group")
    return problems


def _limits(group: Mapping[str, Any]) -> dict[str, Any]:
    return dict(group["template"]["spec"]["containers"][0]["resources"]["limits"])


def kustomization_problems(kustomization: Document, folder: Path) -> list[str]:
    """Every listed file exists, and every manifest in the folder is listed (jobs/ excepted)."""
    listed = set(kustomization.get("resources", []))
    problems = [f"{name}: listed but missing" for name in listed if not (folder / name).is_file()]
    present = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
    problems += [f"{name}: not listed in kustomization.yaml" for name in present - listed]
    if not kustomization.get("namespace"):
        problems.append("no namespace")
    return problems


# --- compose ----------------------------------------------------------------------------------


def compose_problems(compose: Document, base: Path, ignored: Iterable[str]) -> list[str]:
    """Services, dependencies, healthchecks, volumes, secrets and env files all resolve."""
    services: dict[str, dict[str, Any]] = compose.get("services", {})
    ignored = set(ignored)
    problems: list[str] = [] if services else ["no services"]
    for name, service in services.items():
        problems += [f"{name}: {p}" for p in _service_problems(name, service, compose, base)]
        problems += [f"{name}: {p}" for p in _env_file_problems(service, base, ignored)]
    for name, secret in compose.get("secrets", {}).items():
        folder = Path(secret.get("file", "")).parts[0]
        if f"{folder}/" not in ignored:
            problems.append(f"secret {name}: its file is not under a git-ignored folder")
    return problems


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition} (the list form means service_started)."""
    value = service.get("depends_on", {})
    if isinstance(value, list):
        return dict.fromkeys(value, "service_started")
    return {target: spec.get("condition", "service_started") for target, spec in value.items()}


def _service_problems(
    name: str, service: Mapping[str, Any], compose: Document, base: Path
) -> Iterator[str]:
    services = compose["services"]
    if "image" not in service and "build" not in service:
        yield "neither image nor build"
    image = str(service.get("image", ""))
    if image and (":" not in image or image.endswith(":latest")):
        yield f"image {image} is not pinned to a tag"
    if service.get("restart") != "no" and not _has_healthcheck(service):
        yield "a long-running service without a healthcheck"
    for target, condition in depends_on(service).items():
        if target not in services:
            yield f"depends on unknown service {target}"
        elif condition not in DEPENDS_CONDITIONS:
            yield f"unknown depends_on condition {condition}"
        elif condition == "service_healthy" and not _has_healthcheck(services[target]):
            yield f"waits for {target} to be healthy, which has no healthcheck"
        elif (
            condition == "service_completed_successfully"
            and services[target].get("restart") != "no"
        ):
            yield f"waits for {target} to complete, which restarts"
    declared_volumes = set(compose.get("volumes") or {})
    for volume in service.get("volumes", []):
        source = str(volume).split(":", 1)[0]
        if not source.startswith((".", "/", "$", "~")) and source not in declared_volumes:
            yield f"volume {source} is not declared"
    for secret in service.get("secrets", []):
        if secret not in compose.get("secrets", {}):
            yield f"secret {secret} is not declared"
    build = service.get("build")
    if build and not (base / build["context"] / build["dockerfile"]).is_file():
        yield f"Dockerfile {build['dockerfile']} not found"
    environment = service.get("environment", {})
    for key in SECRET_SETTINGS.intersection(environment):
        yield f"{key} written into the compose file (secrets belong in the env file)"


def _has_healthcheck(service: Mapping[str, Any]) -> bool:
    healthcheck = service.get("healthcheck", {})
    return bool(healthcheck.get("test")) and not healthcheck.get("disable", False)


def _env_file_problems(service: Mapping[str, Any], base: Path, ignored: set[str]) -> Iterator[str]:
    for entry in service.get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        if (base / path).is_file():
            continue
        if not (base / f"{path}.example").is_file():
            yield f"env_file {path} exists neither as a file nor as {path}.example"
        elif path not in ignored:
            yield f"env_file {path} is made from the example but not git-ignored"


def dependency_closure(services: Mapping[str, Any], name: str) -> set[str]:
    """Every service ``name`` waits for, directly or through others."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for target in depends_on(services[pending.pop()]):
            if target in services and target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def migration_order_problems(compose: Document, migrate: str = "migrate") -> list[str]:
    """Every service running the clinic image starts after the migration completed."""
    services = compose["services"]
    problems: list[str] = []
    if services.get(migrate, {}).get("command") != ["clinic", "db", "upgrade"]:
        problems.append(f"{migrate} does not run `clinic db upgrade`")
    for name, service in services.items():
        if name == migrate or "build" not in service:
            continue
        if migrate not in dependency_closure(services, name):
            problems.append(f"{name} may start before {migrate} completed")
    return problems


def ray_address_problems(compose: Document) -> list[str]:
    """``--address=HOST:PORT`` of Ray nodes and CLINIC_RAY_ADDRESS point at a head that listens."""
    services = compose["services"]
    addresses: list[tuple[str, str]] = []
    for name, service in services.items():
        command = [str(token) for token in service.get("command", [])]
        if (value := option_value(command, "--address")) is not None:
            addresses.append((name, value))
        if (value := service.get("environment", {}).get("CLINIC_RAY_ADDRESS")) is not None:
            addresses.append((name, str(value)))
    problems: list[str] = []
    for name, address in addresses:
        host, _, port = address.partition(":")
        head = [str(t) for t in services.get(host, {}).get("command", [])]
        if "--head" not in head or option_value(head, "--port") != port:
            problems.append(f"{name}: {address} is not a Ray head's GCS port")
    return problems


def clinic_volume_problems(compose: Document) -> list[str]:
    """Services of the clinic image mount one named volume at their CLINIC_HOME."""
    problems: list[str] = []
    mounted: set[str] = set()
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        home = service.get("environment", {}).get("CLINIC_HOME")
        sources = {str(v).split(":")[0] for v in service.get("volumes", []) if f":{home}" in str(v)}
        if not home or not sources:
            problems.append(f"{name}: no volume at CLINIC_HOME ({home})")
        mounted |= sources
    if len(mounted) > 1:
        problems.append(f"services mount different volumes at CLINIC_HOME: {sorted(mounted)}")
    return problems


# --- Dockerfiles ------------------------------------------------------------------------------


def final_stage(instructions: Sequence[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def dockerfile_problems(
    instructions: Sequence[Instruction], *, torch_pin: str, torch_index: str
) -> list[str]:
    """Multi-stage, non-root, healthchecked, torch pinned as pyproject.toml, no torchvision."""
    problems: list[str] = []
    if sum(i.keyword == "FROM" for i in instructions) < 2:
        problems.append("fewer than two stages")
    problems += _runtime_stage_problems(final_stage(instructions))
    arguments = dockerfile_args(instructions)
    if arguments.get("TORCH_VERSION") != torch_pin:
        problems.append(f"TORCH_VERSION {arguments.get('TORCH_VERSION')} is not {torch_pin}")
    if torch_index not in arguments.get("TORCH_INDEX_URL", ""):
        problems.append(f"TORCH_INDEX_URL is not the {torch_index} index")
    installs = [
        i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments
    ]
    if not any(
        '"torch==${TORCH_VERSION}"' in run and "${TORCH_INDEX_URL}" in run for run in installs
    ):
        problems.append("no `pip install` of torch==${TORCH_VERSION} from ${TORCH_INDEX_URL}")
    if any(re.search(r"\btorch\s*(==|>=|<=|~=|!=|<|>)\s*\d", run) for run in installs):
        problems.append("torch installed with another version specifier")
    if any("torchvision" in run for run in installs):
        problems.append("torchvision is installed")
    return problems


def _runtime_stage_problems(stage: Sequence[Instruction]) -> list[str]:
    problems: list[str] = []
    users = [i.arguments for i in stage if i.keyword == "USER"]
    uid = users[-1].split(":")[0] if users else ""
    if not uid.isdigit() or int(uid) == 0:
        problems.append(f"final stage USER {uid or '(none)'} is not a numeric non-root uid")
    if not any(i.keyword == "COPY" and "--from=" in i.arguments for i in stage):
        problems.append("final stage copies nothing from an earlier stage")
    healthchecks = [i for i in stage if i.keyword == "HEALTHCHECK"]
    commands = [i.exec_form() for i in stage if i.keyword == "CMD"]
    command = commands[-1] if commands else None
    if not healthchecks or healthchecks[-1].exec_form() is None:
        problems.append("final stage has no exec-form HEALTHCHECK")
    elif command is None or command[:2] != ["clinic", "ui"]:
        problems.append("the default command is not `clinic ui`")
    else:
        probe = " ".join(healthchecks[-1].exec_form() or [])
        if f":{option_value(command, '--port')}{UI_HEALTH_PATH}" not in probe:
            problems.append("HEALTHCHECK does not probe the UI's health path on its port")
    return problems


def build_context_problems(
    instructions: Sequence[Instruction], patterns: list[str], forbidden: Iterable[str]
) -> list[str]:
    """What the Dockerfile copies is in the build context; data, keys and envs are not."""
    problems: list[str] = []
    for instruction in instructions:
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        *sources, _ = instruction.arguments.split()
        problems += [
            f"COPY {source}: excluded by .dockerignore"
            for source in sources
            if not dockerignore_allows(patterns, source)
        ]
    problems += [
        f"{path}: would be sent to the builder"
        for path in forbidden
        if dockerignore_allows(patterns, path)
    ]
    return problems


# --- the command line -------------------------------------------------------------------------


class CliCommand(Protocol):
    """What the checks need of a (Typer's vendored) Click command: its parameters; a group also
    has ``commands``, its subcommands by name."""

    @property
    def params(self) -> Sequence[Any]: ...


def subcommands(command: CliCommand) -> Mapping[str, CliCommand] | None:
    """A group's subcommands, or None for a leaf command."""
    found: Mapping[str, CliCommand] | None = getattr(command, "commands", None)
    return found


def cli_problems(argv: Sequence[str], root: CliCommand) -> list[tuple[str, str]]:
    """``(problem, name)`` for each subcommand or option in ``clinic …`` that the CLI lacks."""
    if not argv or argv[0] != "clinic":
        return [("not a clinic command", " ".join(argv))]
    command = root
    path: list[str] = []
    rest = list(argv[1:])
    while (children := subcommands(command)) is not None and rest:
        token = rest.pop(0)
        path.append(token)
        if token not in children:
            return [("unknown command", " ".join(path))]
        command = children[token]
    if subcommands(command) is not None:
        return [("incomplete command", " ".join(path))]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    known.add("--help")
    return [
        ("unknown option", f"{' '.join(path)} {option}")
        for option in (token.split("=", 1)[0] for token in rest if token.startswith("-"))
        if option not in known
    ]


SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<"})
NOT_THE_COMMAND_AFTER = frozenset({"-n", "--namespace", "namespace", "-t", "--tag", "--name"})


def shell_code_lines(markdown: str) -> Iterator[str]:
    """Lines of the fenced code blocks of a Markdown text, ``\\`` continuations joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    for block in blocks:
        yield from re.sub(r"\\\n\s*", " ", block).splitlines()


def clinic_invocations(lines: Iterable[str]) -> list[list[str]]:
    """Each ``clinic …`` argv in shell lines (after ``exec worker``, ``--`` and the like)."""
    invocations: list[list[str]] = []
    for line in lines:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for index, token in enumerate(tokens):
            if " " in token:  # a script passed on, as in `sh -c '… | clinic …'`
                invocations += clinic_invocations([token])
            if token != "clinic" or (index and tokens[index - 1] in NOT_THE_COMMAND_AFTER):
                continue
            argv: list[str] = []
            for word in tokens[index:]:
                if word in SHELL_OPERATORS:
                    break
                argv.append(word)
            invocations.append(argv)
    return invocations
