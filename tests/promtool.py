"""promtool for the tests: Debian's `prometheus` package ships it as /usr/bin/promtool (bookworm has no lighter
package that provides it). Installing the package must not leave a Prometheus server running or starting at boot on
the test machine, so its unit is masked first (a mask deb-systemd-helper never lifts, because it did not make it),
and a temporary policy-rc.d refuses every start while apt runs (that also covers hosts without systemd, where the
package's init script would start the server). `systemctl unmask prometheus` undoes the mask if you want the server.

`check_metrics(text)` is for tests of the real metrics file: promtool's exposition-format lint, empty when clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require_root

PACKAGE = "prometheus"
UNIT_MASK = Path("/etc/systemd/system/prometheus.service")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DENY_STARTS = "#!/bin/sh\n# dreadpi tests: no service starts while promtool's package installs\nexit 101\n"


class PromtoolError(RuntimeError):
    pass


def _run(*argv: str, env: dict | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise PromtoolError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")


def install() -> None:
    """apt-get install Debian's prometheus package (root) without letting its server start, now or at boot."""
    if not UNIT_MASK.exists() and not UNIT_MASK.is_symlink():
        UNIT_MASK.parent.mkdir(parents=True, exist_ok=True)
        UNIT_MASK.symlink_to("/dev/null")
    temporary_policy = not POLICY_RC_D.exists()
    if temporary_policy:
        POLICY_RC_D.write_text(DENY_STARTS)
        POLICY_RC_D.chmod(0o755)
    try:
        _run("apt-get", "update", "-qq")
        _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE,
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    finally:
        if temporary_policy:
            POLICY_RC_D.unlink()


def promtool() -> str:
    """The promtool command, installed first if missing: that needs root, so elsewhere the test skips (and fails in
    CI, which is root)."""
    found = shutil.which("promtool")
    if found:
        return found
    require_root()
    install()
    found = shutil.which("promtool")
    if not found:
        raise PromtoolError(f"the {PACKAGE} package was installed but there is no promtool on PATH")
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """promtool ARGS..., output captured, never raising on its exit code."""
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def check_metrics(text: str) -> str:
    """`promtool check metrics` on an exposition-format text (stdin): what it says, one complaint a line, empty when
    the text parses and passes its lint (HELP and TYPE lines, base units, counters ending in _total, ...). A text that
    does not parse says "error while linting: ..."."""
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 and not output:
        return f"promtool check metrics failed ({done.returncode}) and said nothing"
    return output
