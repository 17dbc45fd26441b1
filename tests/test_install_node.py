"""scripts/install-node.sh: shellcheck-clean, staged under a prefix, idempotent, reversible.

The staged run (`--root`) does everything but apt, the user and systemctl, so it is
safe on a test machine; the root check is tested as an unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "scripts" / "install-node.sh"


def run(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), "bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.shellcheck
def test_shellcheck_is_clean() -> None:
    result = subprocess.run(
        ["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_staged_install_is_idempotent_and_uninstall_keeps_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # No dependencies: the staged venv only has to hold the edge-agent entry point.
    env = {"EDGE_AGENT_PIP_ARGS": "--no-deps"}
    first = run("--root", str(root), env=env)
    assert first.returncode == 0, first.stderr
    assert (root / "opt/edge-agent/venv/bin/edge-agent").exists()
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (REPO / "systemd/edge-agent.service").read_bytes()
    config = root / "etc/edge-agent/agent.toml"
    assert config.read_bytes() == (REPO / "config/agent.toml").read_bytes()
    assert (root / "etc/edge-agent/keys").is_dir()
    assert oct((root / "etc/edge-agent").stat().st_mode & 0o777) == "0o750"

    config.write_text("# edited by the operator\n")
    second = run("--root", str(root), env=env)
    assert second.returncode == 0, second.stderr
    assert "keeping the existing" in second.stdout
    assert config.read_text() == "# edited by the operator\n"

    gone = run("--root", str(root), "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not (root / "opt/edge-agent").exists()
    assert not unit.exists()
    assert config.read_text() == "# edited by the operator\n"


def test_refuses_politely_without_root() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the script as an unprivileged user")
    result = run(prefix=[setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert result.returncode == 1
    assert "please run as root" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--frobnicate"], "unknown option --frobnicate"), (["--root"], "--root needs a directory")],
)
def test_bad_options_are_named(args: list[str], message: str) -> None:
    result = run(*args)
    assert (result.returncode, message in result.stderr) == (2, True), result.stderr
