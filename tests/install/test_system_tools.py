"""Every command the Makefile, .ci/, docker/ and scripts/ call is installed by something."""

from __future__ import annotations

from repo_scripts import load_script

tools = load_script("check_tools")


def test_every_called_command_is_installed_by_something():
    rows, problems = tools.check()
    assert problems == []
    found = {row[0]: row[1] for row in rows}
    # The ones a bare machine lacks are installed by the script that needs them.
    assert found["iptables"] == found["podman"] == "docker/podman-setup.sh"
    assert found["chromium"] == "Makefile"


def test_a_command_nothing_installs_is_reported():
    lines = tools.shell_lines("set -e\nfoo() { :; }\nfoo && frobnicate --x | sort\n"
                              "cat <<'EOF'\nnot-a-command\nEOF\n")
    assert tools.commands_in(lines, {"foo"}) == {"frobnicate", "sort", "cat"}
    assert "frobnicate" not in tools.TOOLS


def test_the_parser_reads_what_scripts_do():
    lines = tools.shell_lines('case "$x" in a|b) podman run x ;; esac\n'
                              'VAR=1 "$PY" -m pip install \\\n  --quiet x && echo "$(od -An x)"\n'
                              'for t in a b; do command -v "$t" || missing+=("$t"); done\n')
    assert tools.commands_in(lines, set()) == {"podman", "echo", "od"}
