"""Shared fixtures: configs on disk, a world-traversable scratch dir for the sandbox user, and a way to run
the real `dreadpi` command as a separate process, as cron does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_root() -> None:
    """Root-only tests run in CI (which is root); elsewhere they skip, and in CI a skip would be a failure."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root, and CI runs as root")
        pytest.skip("needs root")


@pytest.fixture
def root() -> None:
    require_root()


@pytest.fixture
def world_dir():
    """A scratch dir the sandbox user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="dreadpi-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 (tests.apiworld.Certificates)
    """A test CA and certificates for the API tests' HTTPS servers on loopback (tests/apiworld.py)."""
    from tests.apiworld import Certificates, ensure_debian_requests

    require_root()
    ensure_debian_requests()
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def world(world_dir: Path, certs):  # noqa: ANN001, ANN201
    """Runs the real dreadpi with the fixed API names resolving to the test servers (tests/apiworld.World)."""
    from tests.apiworld import World

    return World(world_dir, certs)


def write_config(directory: Path, overrides: dict | None = None, name: str = "dreadpi.cfg") -> Path:
    """A complete config under `directory`, script collector and sim backend; `overrides` is
    {"section": {"key": "value"}}, and a value of None removes the key."""
    sections: dict = {
        "collector": {"source": "script", "timeout": "5"},
        "script": {"command": "/bin/echo 550"},
        "policy": {"min_dwell": "0", "hysteresis": "50"},
        "relays": {"backend": "sim"},
        "paths": {"state_dir": str(directory / "state"), "log_dir": str(directory / "log")},
    }
    for section, values in (overrides or {}).items():
        target = sections.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    text = "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"
        for section, values in sections.items()
    )
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def dreadpi(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command in a fresh interpreter, from this checkout."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TZ": kwargs.pop("tz", "UTC")}
    return subprocess.run([sys.executable, "-m", "dreadpi", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def error_log(directory: Path) -> str:
    """The error log of a config written by write_config(directory), empty when there is none yet."""
    path = directory / "log" / "error.log"
    return path.read_text() if path.exists() else ""


def processes_with(marker: str) -> list:
    """The pids whose command line contains `marker`: a test's proof that nothing it started lives on."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found
