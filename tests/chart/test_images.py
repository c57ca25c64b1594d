"""images/*.Dockerfile, checked without a Docker engine: what the files COPY exists and survives
.dockerignore, the base images are pinned, the images run as a non-root user, the entrypoints are
modules that import (the operator's without torch), and the `operator` extra resolves from the
package index without pulling torch or the rest of the worker stack."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.chart.helmchart import CHART_DIR, REPO_ROOT

IMAGES = REPO_ROOT / "images"
DOCKERFILES = {"worker": IMAGES / "worker.Dockerfile", "operator": IMAGES / "operator.Dockerfile"}
VENV_BIN = Path(sys.executable).parent
# The worker stack the operator image must never contain.
WORKER_ONLY = {"torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate", "triton"}


# --- A small Dockerfile reader ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with line continuations joined and comments dropped (Docker's own rules)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may sit inside a continued instruction too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path.name}:{instruction.line}: before FROM"
            arg_name, _, default = instruction.arguments.partition("=")
            global_args[arg_name] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"line {instruction.line}: use the exec (JSON) form"
    return value


def copy_sources(stage: Stage) -> list[tuple[Instruction, str]]:
    """(instruction, source) for every COPY/ADD from the build context (not --from a stage)."""
    found = []
    for instruction in stage.instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(instruction.arguments)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
        found.extend((instruction, source) for source in paths[:-1])
    return found


# --- .dockerignore, with Docker's matching rules ------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match plus Docker's `**`: `*` and `?` stay within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Later patterns win; a pattern matching a parent directory matches everything under it;
    `!pattern` re-includes (moby/patternmatcher semantics)."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            cleaned = line.lstrip("!").strip().strip("/")
            self.patterns.append((exclusion, _pattern_regex(cleaned)))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for exclusion, regex in self.patterns:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not exclusion
        return excluded


DOCKERIGNORE = DockerIgnore((REPO_ROOT / ".dockerignore").read_text())


def context_files(source: str) -> list[str]:
    """The files under a COPY source that enter the build context (relative to the repo)."""
    path = REPO_ROOT / source
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    relative = [str(p.relative_to(REPO_ROOT)) for p in files]
    return [r for r in relative if not DOCKERIGNORE.excluded(r)]


# --- Dockerfile structure -----------------------------------------------------------------------


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_copy_sources_exist_and_enter_the_build_context(image: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    sources = [source for stage in dockerfile.stages for _, source in copy_sources(stage)]
    assert sources, "nothing copied from the build context?"
    for source in sources:
        assert not source.startswith(("/", "..")), f"{source}: outside the build context"
        path = REPO_ROOT / source
        assert path.exists(), f"{image}: COPY {source}: no such file in the repository"
        assert not DOCKERIGNORE.excluded(source), f"{image}: .dockerignore excludes COPY {source}"
        if path.is_dir():
            python_files = [str(p.relative_to(REPO_ROOT)) for p in path.rglob("*.py")
                            if "__pycache__" not in p.parts]
            shipped = set(context_files(source))
            assert python_files, f"{image}: COPY {source} copies no Python module"
            assert not [p for p in python_files if p not in shipped], (
                f"{image}: .dockerignore drops modules under {source}")


def test_build_context_holds_what_the_package_build_needs() -> None:
    """pyproject.toml's readme and package folders must reach both images' build stage."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "selection", "operator"}
    for image, path in DOCKERFILES.items():
        copied = {source for _, source in copy_sources(parse_dockerfile(path).stages[0])}
        assert needed <= copied, f"{image}: the build stage misses {needed - copied}"


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "examples/demo/out/selection.json", "tests/conftest.py",
    "selection/__pycache__/spec.cpython-311.pyc", "dsel.egg-info/PKG-INFO",
    "charts/dsel/values.yaml",
])
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert DOCKERIGNORE.excluded(path)


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = DockerIgnore("*\n!keep/\n**/*.log\nkeep/secret\n")
    assert rules.excluded("anything") and rules.excluded("dir/file")
    assert not rules.excluded("keep/file.py") and not rules.excluded("keep/deep/er.py")
    assert rules.excluded("keep/debug.log") and rules.excluded("keep/secret")


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_base_images_are_pinned(image: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    stage_names = set()
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        reference = stage.base
        if "@sha256:" not in reference:
            repository, _, tag = reference.rpartition(":")
            assert repository and "/" not in tag, f"{image}: {reference} has no tag"
            assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), (
                f"{image}: {reference} is not pinned to a full version")
        if stage.name:
            stage_names.add(stage.name)
    assert len(dockerfile.stages) >= 2, f"{image}: expected a multi-stage build"


def test_worker_base_is_a_cuda_pytorch_new_enough_for_transformers() -> None:
    base = parse_dockerfile(DOCKERFILES["worker"]).final.base
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert match, f"the worker base should be an official CUDA PyTorch runtime image, got {base}"
    torch_version = Version(match.group(1))
    # transformers (pinned in requirements/constraints.txt) states its torch floor: honour it.
    requirements = [Requirement(r) for r in metadata.requires("transformers") or []]
    floors = [spec.version for r in requirements if r.name == "torch"
              for spec in r.specifier if spec.operator == ">="]
    assert floors, "transformers no longer declares a torch floor: update this test"
    assert all(torch_version >= Version(floor) for floor in floors), (base, floors)


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_runs_as_the_charts_non_root_user(image: str) -> None:
    final = parse_dockerfile(DOCKERFILES[image]).final
    users = [i.arguments for i in final.instructions if i.keyword == "USER"]
    assert users, f"{image}: the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {users[-1]}"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert gid and int(gid) == values["podSecurityContext"]["runAsGroup"]


def test_entrypoints() -> None:
    worker = parse_dockerfile(DOCKERFILES["worker"]).final
    (entrypoint,) = [exec_form(i) for i in worker.instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "selection.jobs"]

    operator = parse_dockerfile(DOCKERFILES["operator"]).final
    (entrypoint,) = [exec_form(i) for i in operator.instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["kopf", "run", "-m", "selection_operator"]
    # The chart runs the same command (with its own flags), so a custom image behaves the same.
    deployment = (CHART_DIR / "templates" / "deployment.yaml").read_text()
    assert 'command: ["kopf", "run", "-m", "selection_operator"]' in deployment
    (cmd,) = [exec_form(i) for i in operator.instructions if i.keyword == "CMD"]
    assert "--standalone" in cmd and "--liveness=http://0.0.0.0:8081/healthz" in cmd


def test_worker_openmp_threads_sleep_when_idle() -> None:
    final = parse_dockerfile(DOCKERFILES["worker"]).final
    env = dict(
        item.partition("=")[::2]
        for i in final.instructions if i.keyword == "ENV"
        for item in shlex.split(i.arguments)
    )
    assert env.get("OMP_WAIT_POLICY") == "PASSIVE"


def test_operator_image_installs_only_the_operator_extra() -> None:
    runs = [i.arguments for stage in parse_dockerfile(DOCKERFILES["operator"]).stages
            for i in stage.instructions if i.keyword == "RUN"]
    installs = [m.group(1) for run in runs for m in re.finditer(r"pip install ([^&|;]*)", run)]
    assert installs, "the operator image installs nothing?"
    for command in installs:
        extras = re.findall(r"\.\[([\w,-]+)\]", command)
        assert extras == ["operator"], f"pip install {command}"
        words = set(re.split(r"[\s\"'=<>\[\],]+", command))
        assert not WORKER_ONLY & words, f"pip install {command}"


# --- The entrypoint modules, in this virtualenv -------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def _blocking(modules: set[str]) -> str:
    """Code that makes `import <module>` fail for each module, as in an image without it."""
    return f"import sys\nfor name in {sorted(modules)!r}:\n    sys.modules[name] = None\n"


def test_worker_entrypoint_runs() -> None:
    """`python -m selection.jobs` with no stage prints its usage and exits 2, without kopf."""
    result = _python(_blocking({"kopf"}) +
                     "import runpy\nrunpy.run_module('selection.jobs', run_name='__main__')")
    assert result.returncode == 2, result.stderr
    assert "usage: python -m selection.jobs" in result.stderr


def test_operator_entrypoint_imports_without_torch() -> None:
    """What `kopf run -m selection_operator` imports, in an environment without the worker stack."""
    assert (VENV_BIN / "kopf").exists(), "no kopf console script (the image's entrypoint)"
    result = _python(_blocking(WORKER_ONLY) +
                     "import selection_operator\n"
                     "assert selection_operator.__file__, 'a namespace package: no __init__.py'")
    assert result.returncode == 0, (
        "`import selection_operator` fails (with torch, transformers, peft blocked as in the "
        f"operator image):\n{result.stderr[-3000:]}")


def test_operator_module_registers_dataselection_handlers() -> None:
    """kopf imports only the package named by -m: its handlers must be registered by that import."""
    shipped = yaml.safe_load((CHART_DIR / "crds" / "dataselections.dsel.dev.yaml").read_text())
    names = shipped["spec"]["names"]
    resource = dict(group=shipped["spec"]["group"], version=shipped["spec"]["versions"][0]["name"],
                    plural=names["plural"], kind=names["kind"], singular=names["singular"],
                    shortcuts=names["shortNames"], categories=names["categories"],
                    namespaced=True, preferred=True)
    # kopf has no public "list handlers" call: read its registry's parts (kopf is pinned in
    # requirements/constraints.txt; its own resource observer reads the same attributes).
    code = _blocking(WORKER_ONLY) + f"""
import kopf, selection_operator
registry = kopf.get_default_registry()
resource = kopf.Resource(**{resource!r})
handlers = [h for part in (registry._changing, registry._watching, registry._spawning,
                           registry._indexing)
            for h in part.get_all_handlers()]
matching = [h.id for h in handlers if h.selector is not None and h.selector.check(resource)]
print(len(matching))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 0, (
        "importing selection_operator registers no handler for DataSelections: "
        "`kopf run -m selection_operator` would serve nothing")


# --- Dependency resolution against the package index --------------------------------------------


def _build_context(destination: Path, dockerfile: Path) -> Path:
    """The files the Dockerfile's build stage copies, as Docker would send them."""
    for _, source in copy_sources(parse_dockerfile(dockerfile).stages[0]):
        for relative in context_files(source):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, target)
    return destination


def test_operator_extra_resolves_without_torch(tmp_path: Path) -> None:
    """pip resolves dsel[operator] from the build context, with the project's pins, as the image
    build does: the install set has kopf and no part of the worker stack."""
    context = _build_context(tmp_path / "context", DOCKERFILES["operator"])
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "--constraint", "requirements/constraints.txt", ".[operator]"],
        cwd=context, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert {"dsel", "kopf", "kubernetes", "prometheus-client", "pydantic", "boto3"} <= set(installs)
    pulled = {name for name in installs
              if name in WORKER_ONLY or name.startswith(("nvidia-", "torch"))}
    assert not pulled, f"the operator extra pulls worker packages: {sorted(pulled)}"
    # The pins in requirements/constraints.txt are what the image gets.
    pins = dict(line.split("==") for line in
                (REPO_ROOT / "requirements" / "constraints.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    for name, version in pins.items():
        key = name.lower().replace("_", "-")
        if key in installs:
            assert installs[key] == version, f"{name}: resolved {installs[key]}, pinned {version}"


def test_leader_election_entrypoint_runs_without_torch() -> None:
    """`python -m selection_operator.leader` (replicaCount > 1) in the operator image's environment."""
    result = _python(_blocking(WORKER_ONLY) +
                     "import runpy, sys\nsys.argv = ['leader', '--help']\n"
                     "runpy.run_module('selection_operator.leader', run_name='__main__')")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--identity" in result.stdout
