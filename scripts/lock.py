"""The lock: every install set of pyproject.toml resolved once, pinned with hashes, in requirements/.

`make lock` runs this: it turns the compatible ranges of pyproject.toml into one fully pinned,
hashed requirements file per install set (pip-tools' pip-compile, so the resolution uses this
machine's pip configuration, the CPU build of torch included). `dev` is resolved first and
every other set is resolved under its pins, so a package has one version in every set.
Existing pins are kept unless `--upgrade` is given. `--check` verifies the lock against
pyproject.toml without resolving anything (tests/build/test_lock.py runs it).

    python scripts/lock.py [--upgrade] [--check] [SET ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "requirements"
PROJECT = "modalfuse"


@dataclass(frozen=True)
class InstallSet:
    """One resolution: which extras of pyproject.toml it installs and who installs it."""

    name: str
    extras: tuple[str, ...]
    used_by: str
    project: bool = True  # the core dependencies and the build backend come along
    requires: tuple[str, ...] = ()  # a tool outside pyproject.toml, resolved on its own

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


SETS = (
    InstallSet("dev", ("dev",), "make test, make lint, CI (.ci/run)"),
    InstallSet("run", ("serve", "ui", "registry", "train", "monitor"), "make run, make install"),
    InstallSet("serve", ("serve",), "the serve image (docker/Dockerfile, target serve)"),
    InstallSet("ui", ("serve", "ui"), "the ui image (docker/Dockerfile, target ui)"),
    InstallSet("train", ("serve", "train", "monitor"), "the train image (docker/Dockerfile, target train)"),
    InstallSet("mlflow-server", ("mlflow-server",), "the compose stack's MLflow server "
               "(docker/stack.Dockerfile)", project=False),
    # checkov's own pins (boto3, packaging, networkx, ...) clash with the project's: it gets a
    # venv of its own (.cache/checkov) and a resolution of its own, not under dev's pins.
    InstallSet("checkov", (), "make lint's checkov venv (.cache/checkov)", project=False,
               requires=("checkov==3.3.30",)),
)
BY_NAME = {s.name: s for s in SETS}
DIGEST_LINE = "# pyproject-sha256: "


def load_pyproject() -> dict:
    """pyproject.toml as a dict."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_digest(pyproject: dict) -> str:
    """A digest of what decides the resolution: Python, build backend, every dependency list."""
    project = pyproject["project"]
    relevant = {"requires-python": project.get("requires-python"),
                "build-system": pyproject["build-system"]["requires"],
                "dependencies": project.get("dependencies", []),
                "optional-dependencies": project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def direct_requirements(pyproject: dict, install_set: InstallSet) -> list[str]:
    """The set's own requirements, with modalfuse's extras that refer to other extras expanded."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(install_set.requires)
    if install_set.project:
        out += pyproject["build-system"]["requires"]  # the editable install builds offline
        out += project.get("dependencies", [])
    seen: set[str] = set()
    todo = list(install_set.extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"install set {install_set.name!r}: pyproject.toml has no extra {extra!r}; "
                             f"extras: {sorted(optional)}")
        for req in optional[extra]:
            parsed = Requirement(req)
            if canonicalize_name(parsed.name) == PROJECT:
                todo += sorted(parsed.extras)
            else:
                out.append(req)
    return list(dict.fromkeys(out))


def read_pins(path: Path) -> dict[str, Version]:
    """name -> pinned version of a lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==([^\s\\;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def header(install_set: InstallSet, digest: str) -> str:
    """The lines this project puts above pip-compile's output."""
    if install_set.requires:
        what = f"{', '.join(install_set.requires)} (scripts/lock.py), on its own"
    else:
        what = (f"{PROJECT}[{','.join(install_set.extras)}]" if install_set.project
                else f"the extra '{','.join(install_set.extras)}' alone") + " of pyproject.toml"
        what += "" if install_set.name == "dev" else ", under the pins of requirements/dev.txt"
    return (f"# The lock of install set '{install_set.name}': {what}.\n"
            f"# Installed by {install_set.used_by} with pip's --require-hashes --no-deps.\n"
            f"# Made by `make lock` (scripts/lock.py); never edited by hand.\n"
            f"{DIGEST_LINE}{digest}\n")


def compile_set(install_set: InstallSet, pyproject: dict, work: Path, upgrade: bool) -> None:
    """Resolve one install set with pip-compile into requirements/<name>.txt."""
    src = work / f"{install_set.name}.in"
    lines = direct_requirements(pyproject, install_set)
    if install_set.name != "dev" and not install_set.requires:
        lines = [f"-c {work / 'dev-pins.txt'}", *lines]
    src.write_text("\n".join(lines) + "\n")
    out = install_set.path
    cmd = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
           "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
           "--no-header", "--output-file", str(out), str(src)]
    if upgrade:
        cmd.append("--upgrade")
    sys.stdout.write(f"lock: resolving {install_set.name} ..." + "\n")
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if done.returncode != 0:
        errors = [ln for ln in done.stderr.splitlines() if "is ignored" not in ln]
        raise SystemExit(f"lock: pip-compile failed for {install_set.name}:\n" + "\n".join(errors[-40:]))
    body = out.read_text()
    # pip-compile names its input file: say pyproject.toml instead (that is what it came from).
    body = re.sub(r"-r \S+\.in\b", "pyproject.toml", body)
    body = re.sub(r"-c \S+dev-pins\.txt\b", "requirements/dev.txt", body)
    out.write_text(header(install_set, pyproject_digest(pyproject)) + body)
    sys.stdout.write(f"lock: {out.relative_to(ROOT)}: {len(read_pins(out))} packages" + "\n")


def lock(names: list[str], upgrade: bool) -> None:
    """Resolve the named sets (dev first, the others under its pins), two at a time."""
    pyproject = load_pyproject()
    LOCK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modalfuse-lock-") as tmp:
        work = Path(tmp)
        if "dev" in names or not BY_NAME["dev"].path.exists():
            compile_set(BY_NAME["dev"], pyproject, work, upgrade)
        pins = read_pins(BY_NAME["dev"].path)
        (work / "dev-pins.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        rest = [BY_NAME[n] for n in names if n != "dev"]
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(compile_set, s, pyproject, work, upgrade) for s in rest]:
                future.result()


def check(names: list[str]) -> list[str]:
    """What is wrong with the lock of each named set (empty when it agrees with pyproject.toml)."""
    pyproject = load_pyproject()
    digest = pyproject_digest(pyproject)
    problems: list[str] = []
    dev_pins = read_pins(BY_NAME["dev"].path) if BY_NAME["dev"].path.exists() else {}
    for name in names:
        install_set = BY_NAME[name]
        path = install_set.path
        if not path.exists():
            problems.append(f"{name}: requirements/{path.name} is missing; run `make lock`")
            continue
        text = path.read_text()
        if f"{DIGEST_LINE}{digest}" not in text:
            problems.append(f"{name}: pyproject.toml's dependencies changed since "
                            f"requirements/{path.name} was made; run `make lock`")
        pins = read_pins(path)
        for req in map(Requirement, direct_requirements(pyproject, install_set)):
            if req.marker is not None and not req.marker.evaluate():
                continue
            version = pins.get(canonicalize_name(req.name))
            if version is None:
                problems.append(f"{name}: {req} is not in requirements/{path.name}")
            elif not req.specifier.contains(version, prereleases=True):
                problems.append(f"{name}: requirements/{path.name} pins {req.name}=={version}, "
                                f"outside pyproject.toml's {req}")
        for pkg, version in pins.items():
            if not install_set.requires and dev_pins and dev_pins.get(pkg, version) != version:
                problems.append(f"{name}: {pkg}=={version} but requirements/dev.txt pins {dev_pins[pkg]}")
        unhashed = [ln for ln in text.splitlines() if re.match(r"^[A-Za-z0-9].*==", ln) and "\\" not in ln]
        problems += [f"{name}: no hash for {ln.strip()}" for ln in unhashed]
        problems += [f"{name}: a local path in the lock: {ln.strip()}"
                     for ln in text.splitlines() if "file://" in ln or " @ " in ln]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", help=f"install sets (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--upgrade", action="store_true", help="take the newest versions the ranges allow")
    parser.add_argument("--check", action="store_true", help="check the lock, resolve nothing")
    args = parser.parse_args()
    names = args.sets or list(BY_NAME)
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise SystemExit(f"unknown install set(s) {unknown}; sets: {', '.join(BY_NAME)}")
    if not args.check:
        lock(names, args.upgrade)
    problems = check(names)
    for problem in problems:
        sys.stderr.write(f"lock: {problem}" + "\n")
    if problems:
        raise SystemExit(1)
    sys.stdout.write(f"lock: {', '.join(names)} agree with pyproject.toml" + "\n")


if __name__ == "__main__":
    main()
