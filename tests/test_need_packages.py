"""scripts/need-packages: what makes `scripts/test` work on a fresh Debian machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "need-packages"
ABSENT = "edge-agent-no-such-package"

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-query") is None, reason="not a Debian system (no dpkg-query)"
)


def run(
    *packages: str, env: dict[str, str] | None = None, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv (util-linux) to run the script as an unprivileged user")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*prefix, str(SCRIPT), "test", *packages],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_installed_packages_pass_silently() -> None:
    result = run("dpkg", "bash")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_root_it_stops_with_the_exact_install_line() -> None:
    result = run("dpkg", ABSENT, unprivileged=True)
    assert result.returncode == 1
    assert f"    sudo apt-get install -y --no-install-recommends {ABSENT}\n" in result.stderr


def test_it_can_be_told_to_go_on_without_them() -> None:
    result = run(ABSENT, env={"EDGE_AGENT_NO_INSTALL": "1"}, unprivileged=True)
    assert result.returncode == 0
    assert f"going on without {ABSENT}" in result.stderr
