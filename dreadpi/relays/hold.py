"""Who keeps the relay pins driven between cycles, and the small root service that does it when the kernel won't.

cron starts a new process every cycle. Register access (python3-rpi.gpio) writes the GPIO registers, which keep
their value after the process exits. A gpiochip line (rpi-lgpio, the gpiochip backend) belongs to the process that
requested it, and when that process exits the kernel decides: the Raspberry Pi kernel keeps released outputs
driven by default, but with `dtparam=strict_gpiod`, on mainline kernels (Debian's own kernel on a Pi) and on
older ones, the pin goes back to an input and the relay drops. There the hold service (`dreadpi relay-hold`, a
systemd unit) owns the lines and the cycle hands it the levels over a root-only socket in the state dir.

The service drives only levels a cycle asked for: at start it claims nothing, unless a cycle asked for levels
earlier in this same boot (it restarted), which it then re-asserts. If it dies, the kernel's release behaviour is
what happens, which on such kernels is every relay released: drm0, normal operation.
"""

from __future__ import annotations

import json
import os
import socket

from dreadpi import hardware
from dreadpi.errors import RelayError

SOCKET = "relay-hold.sock"
HELD = "relay-hold.json"
TIMEOUT = 5.0
_SERVICE = "dreadpi-relay-hold"


def gpiochip_based(backend_name: str) -> bool:
    """Whether these relays are gpiochip lines (their level after exit is the kernel's choice)."""
    if backend_name == "gpiochip":
        return True
    from dreadpi.relays.rpi_gpio import GPIOCHIP, provider

    return provider() == GPIOCHIP


def kernel_keeps_outputs() -> tuple:
    """(keeps, why, chip): whether this kernel keeps the header's released outputs driven, the fact that says so,
    and the header chip's `/dev/... (label)`."""
    from dreadpi.relays.gpiochip import header_chip

    chip = header_chip()
    chip.close()
    keeps, why = hardware.release_keeps_outputs(chip.label)
    return keeps, why, f"{chip.path} ({chip.label})"


def choose(settings, state_dir: str) -> tuple:  # noqa: ANN001 (config.RelaySettings)
    """(backend, note) for a cycle: the hold service when it runs, else the backend itself where the lines stay
    driven after this process exits; anything else is refused before a pin is touched, saying what to change."""
    from dreadpi.relays import open_backend

    if not gpiochip_based(settings.backend):
        return open_backend(settings.backend, state_dir), None
    client = HoldClient(os.path.join(state_dir, SOCKET), settings.pins)
    if settings.hold != "no" and client.available():
        return client, None
    keeps, why, _chip = kernel_keeps_outputs()
    if settings.hold == "yes":
        raise RelayError(f"relays.hold = yes, but the relay hold service is not running (no answer on "
                         f"{client.path}); start it: systemctl start {_SERVICE}")
    if keeps:
        return open_backend(settings.backend, state_dir), None
    advice = ("start the relay hold service (systemctl enable --now dreadpi-relay-hold)" if settings.hold == "auto"
              else "set relays.hold = auto and run the relay hold service")
    raise RelayError(f"relays not driven: this kernel returns a GPIO line to an input when the process that drove it "
                     f"exits ({why}), so the relays would drop after every cycle. Either {advice}, or, on Raspberry "
                     f"Pi OS, remove dtparam=strict_gpiod from /boot/firmware/config.txt and reboot")


def _exchange(path: str, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    if not isinstance(answer, dict):
        raise ValueError("not an object")
    return answer


class HoldClient:
    """A backend that asks the hold service, which holds the lines, to read and drive them."""

    def __init__(self, path: str, pins: tuple) -> None:
        self.path = path
        self.pins = pins

    def available(self) -> bool:
        if not os.path.exists(self.path):
            return False
        try:
            return "levels" in _exchange(self.path, {"op": "read", "pins": list(self.pins)})
        except (OSError, ValueError):
            return False

    def _ask(self, request: dict) -> dict:
        try:
            answer = _exchange(self.path, request)
        except (OSError, ValueError) as err:
            raise RelayError(f"relay hold service: no usable answer on {self.path} ({err}); "
                             f"see: systemctl status {_SERVICE}") from None
        if "error" in answer:
            raise RelayError(f"relay hold service: {answer['error']}")
        return answer

    def read(self, pins: tuple) -> tuple | None:
        levels = self._ask({"op": "read", "pins": list(pins)})["levels"]
        return None if levels is None else tuple(levels)

    def write(self, pins: tuple, levels: tuple) -> None:
        self._ask({"op": "write", "pins": list(pins), "levels": list(levels)})


class Holder:
    """The service's lines: the configured pins, held through the kernel's uAPI once a cycle asks for levels."""

    def __init__(self, pins: tuple, state_dir: str) -> None:
        from dreadpi.relays.gpiochip import GpiochipBackend

        self.pins = pins
        self.backend = GpiochipBackend()
        self.backend.consumer = _SERVICE
        self.record = os.path.join(state_dir, HELD)
        self.levels: tuple | None = None
        # Everything it will need, imported now: a deploy may replace the program's files while it runs.
        from dreadpi.state import write_atomic

        self._write = write_atomic

    def resume(self) -> str | None:
        """Re-assert what a cycle asked for earlier in this boot, if the service restarted; never anything else."""
        try:
            with open(self.record, encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("boot_id") != hardware.boot_id() or \
                saved.get("pins") != list(self.pins) or not _levels_ok(saved.get("levels"), len(self.pins)):
            return None
        self._drive(tuple(saved["levels"]))
        return f"re-asserted {' '.join(map(str, self.levels or ()))} on GPIO {' '.join(map(str, self.pins))}, " \
               f"as a cycle asked earlier in this boot"

    def handle(self, request: object) -> dict:
        if not isinstance(request, dict) or request.get("op") not in ("read", "write"):
            return {"error": "unknown request"}
        pins = tuple(request.get("pins") or ())
        if not pins or not set(pins) <= set(self.pins):
            return {"error": f"this service holds GPIO {' '.join(map(str, self.pins))} (relays.pins), "
                             f"not {' '.join(map(str, pins))}; restart it after changing relays.pins"}
        if request["op"] == "read":
            if self.levels is None:
                return {"levels": None}
            return {"levels": [self.levels[self.pins.index(pin)] for pin in pins]}
        levels = request.get("levels")
        if not _levels_ok(levels, len(pins)):
            return {"error": "levels must be one 0 or 1 per pin"}
        wanted = dict(zip(self.pins, self.levels)) if self.levels is not None else {}
        wanted.update(zip(pins, levels))
        if len(wanted) != len(self.pins):
            return {"error": "asked to drive some relay pins before this service holds the others"}
        try:
            self._drive(tuple(wanted[pin] for pin in self.pins))
        except RelayError as err:
            return {"error": str(err)}
        return {"levels": list(self.levels or ())}

    def _drive(self, levels: tuple) -> None:
        self.backend.write(self.pins, levels)  # all pins, one request, kept open: changed in place after this
        self.levels = levels
        self._write(self.record, json.dumps({"boot_id": hardware.boot_id(), "pins": list(self.pins),
                                              "levels": list(levels)}) + "\n", 0o600, durable=False)


def _levels_ok(levels: object, count: int) -> bool:
    return isinstance(levels, list) and len(levels) == count and all(level in (0, 1) for level in levels)


def needed(settings) -> str | None:  # noqa: ANN001 (config.RelaySettings)
    """Why the service is not needed for these settings, or None when it is."""
    if settings.backend == "sim":
        return "relays.backend is sim"
    if settings.hold == "no":
        return "relays.hold is no"
    if not gpiochip_based(settings.backend):
        return "RPi.GPIO here is register access (python3-rpi.gpio), whose levels stay after a cycle exits"
    if settings.hold == "auto":
        keeps, why, _chip = kernel_keeps_outputs()
        if keeps:
            return f"this kernel keeps released outputs driven ({why})"
    return None


def serve(settings, state_dir: str, log) -> int:  # noqa: ANN001 (config.RelaySettings; log(str))
    """Run the service until SIGTERM: one request at a time, from root only."""
    import signal
    import struct

    reason = needed(settings)
    if reason is not None:
        log(f"relay hold service not needed: {reason}; exiting")
        return 0
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    holder = Holder(settings.pins, state_dir)
    try:
        resumed = holder.resume()
    except RelayError as err:
        resumed = f"could not re-assert the levels of this boot: {err}"
    if resumed:
        log(resumed)
    path = os.path.join(state_dir, SOCKET)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)  # the socket is root's alone: whoever can write to it drives the relays
    try:
        server.bind(path)
    except OSError as err:
        raise RelayError(f"relay hold service: cannot listen on {path}: {err.strerror}") from None
    finally:
        os.umask(old_umask)
    server.listen(4)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    log(f"relay hold service: holding GPIO {' '.join(map(str, settings.pins))} on request, socket {path}")
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
                try:
                    data = b""
                    while not data.endswith(b"\n") and len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if uid != 0:
                        answer = {"error": "only root may drive the relays"}
                    else:
                        try:
                            answer = holder.handle(json.loads(data))
                        except ValueError:
                            answer = {"error": "not a request"}
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    continue
    finally:
        server.close()
        try:
            os.unlink(path)
        except OSError:
            pass
