"""What the API collectors (pvoutput, enphase, envoy) share on the root side of the sandbox.

The child is `/usr/bin/python3 -I` with Debian's python3-requests: the only interpreter and HTTP client a
fresh Pi OS has, readable by the sandbox user. Its program is the `fetch_*` modules of this package, sent on
stdin with the settings, so the child needs no path into the installed package and no environment. It prints
one JSON object; this module checks it strictly, because the child talked to the network and root should
believe nothing it says without checking.
"""

from __future__ import annotations

import json
import math
import os

from dreadpi.collectors import Invocation
from dreadpi.errors import CollectorError
from dreadpi.reading import Reading

PYTHON = "/usr/bin/python3"  # Debian's, with python3-requests; the role installs both
_HERE = os.path.dirname(os.path.abspath(__file__))
# Installs the modules sent on the first stdin line, then runs the collector; kept tiny as it shows in `ps`.
_BOOT = (
    "import json,sys,types\n"
    "e=json.loads(sys.stdin.readline())\n"
    "for n,s in e['modules']:\n"
    " m=types.ModuleType(n);sys.modules[n]=m;exec(compile(s,n+'.py','exec'),m.__dict__)\n"
    "sys.modules[e['run']].run()\n"
)
EXTRA_KEYS = ("consumption_watts", "net_watts")
HEADROOM = 2.0  # seconds the child's own deadline leaves before the sandbox's kill, so it can say why


def invocation(module: str, settings: dict, timeout: float) -> Invocation:
    """Run `fetch_<module>` in the child with `settings` (which travel on stdin, never in argv)."""
    modules = []
    for name in ("fetch_common", f"fetch_{module}"):
        with open(os.path.join(_HERE, name + ".py"), encoding="utf-8") as handle:
            modules.append([name, handle.read()])
    envelope = json.dumps({"modules": modules, "run": f"fetch_{module}"})
    payload = dict(settings, budget=max(1.0, timeout - HEADROOM))
    stdin = (envelope + "\n" + json.dumps(payload) + "\n").encode("utf-8")
    return Invocation(argv=(PYTHON, "-I", "-c", _BOOT), stdin=stdin)


def decode(stdout: bytes) -> dict:
    """The child's result object, or CollectorError when it is not one."""
    try:
        result = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        text = stdout.decode("utf-8", "replace").strip()
        raise CollectorError(f"the collector printed no result ({text[:60]!r})" if text else
                             "the collector printed nothing") from None
    if not isinstance(result, dict):
        raise CollectorError("the collector's result is not a JSON object")
    return result


def warnings(result: dict) -> list:
    found = result.get("warnings")
    if not isinstance(found, list):
        return []
    return [str(item)[:200] for item in found if isinstance(item, str)][:5]


def error(result: dict) -> str | None:
    message = result.get("error")
    if message is None:
        return None
    return str(message)[:300] or "failed without saying why"


def problem(result: dict) -> str:
    """The failure's class as the child named it (dreadpi.errors.PROBLEMS); CollectorError checks it."""
    return str(result.get("problem") or "bad-answer")


def reading(result: dict, source: str) -> Reading:
    """The reading in a successful result; types are checked here, plausibility by Reading.problem()."""
    watts, at = result.get("watts"), result.get("at")
    for name, value in (("watts", watts), ("at", at)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CollectorError(f"the collector's result has no valid {name}")
    extra = {}
    given = result.get("extra")
    if isinstance(given, dict):
        for key in EXTRA_KEYS:
            value = given.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                extra[key] = float(value)
    return Reading(watts=float(watts), at=float(at), source=source, extra=extra or None)


class Store:
    """A collector's own files in the state dir (root only, 0600): tokens, pins and budgets.

    Written with state.write_atomic: a power cut leaves the old file or the new one, never half of one, which
    matters most for Enphase refresh tokens that work exactly once.
    """

    def __init__(self, state_dir: str, source: str) -> None:
        self.state_dir = state_dir
        self.source = source

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{self.source}-{name}.json")

    def read(self, name: str) -> dict | None:
        """The stored object, None when there is none; a broken file is an error, never silently replaced."""
        path = self.path(name)
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise CollectorError(f"{path} is unreadable ({err.__class__.__name__}); move it aside to start "
                                 "afresh") from None
        if not isinstance(value, dict):
            raise CollectorError(f"{path} is not a JSON object; move it aside to start afresh")
        return value

    def write(self, name: str, value: dict) -> None:
        from dreadpi.state import write_atomic

        path = self.path(name)
        try:
            os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
            write_atomic(path, json.dumps(value, sort_keys=True, indent=1) + "\n", 0o600)
        except OSError as err:
            raise CollectorError(f"cannot write {path}: {err.strerror or err}") from None
