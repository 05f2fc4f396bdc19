"""promtool for the tests: Debian's `prometheus` package ships it as /usr/bin/promtool (bookworm has no lighter
package that provides it). It is installed with no Prometheus server running or starting at boot (tests/debian.py).

`check_metrics(text)` is for tests of the real metrics file: promtool's exposition-format lint, empty when clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests import debian
from tests.conftest import require_root

PACKAGE = "prometheus"


class PromtoolError(RuntimeError):
    pass


def promtool() -> str:
    """The promtool command, installed first if missing: that needs root, so elsewhere the test skips (and fails in
    CI, which is root)."""
    found = shutil.which("promtool")
    if found:
        return found
    require_root()
    debian.install([PACKAGE], units=("prometheus.service",))
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
