"""Facts about the board and kernel the relays run on, read from files, never by touching a pin.

The model and revision explain a failure in words a person can check (status, check-config); the boot id tells a
cycle whether the levels it drove last time can still be standing; the pinctrl driver's parameter tells whether
this kernel keeps a line driven after the process that drove it exits, which a new process every cycle relies on.
"""

from __future__ import annotations

DEVICE_TREE = "/proc/device-tree"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# The Raspberry Pi kernel keeps released outputs driven unless this parameter is off (`dtparam=strict_gpiod` in
# config.txt turns it off); mainline took the same parameter in 2024, off by default, and older mainline kernels
# have none and return released pins to inputs.
PERSIST_PARAMETER = "/sys/module/{module}/parameters/persist_gpio_outputs"
_PERSIST_MODULES = {"pinctrl-rp1": "pinctrl_rp1", "pinctrl-bcm2711": "pinctrl_bcm2835",
                    "pinctrl-bcm2835": "pinctrl_bcm2835"}


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(256)
    except OSError:
        return None


def model() -> str | None:
    """Such as 'Raspberry Pi 5 Model B Rev 1.0'; None off a Pi."""
    raw = _read(f"{DEVICE_TREE}/model") or b""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() or None


def revision() -> str | None:
    """The board's revision code in hex (such as 'c03114'), from the device tree, else /proc/cpuinfo."""
    raw = _read(f"{DEVICE_TREE}/system/linux,revision")
    if raw and len(raw) >= 4:
        return f"{int.from_bytes(raw[:4], 'big'):x}"
    for line in (_read("/proc/cpuinfo") or b"").decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Revision":
            return value.strip().lower() or None
    return None


def has_rp1(code: str | None) -> bool:
    """A board whose header is on the RP1 chip (Pi 5, Pi 500, CM5): its processor field names the BCM2712."""
    try:
        number = int(code or "", 16)
    except ValueError:
        return False
    return bool(number >> 23 & 1) and (number >> 12 & 0xF) == 4


def boot_id() -> str:
    raw = _read(BOOT_ID)
    return raw.decode("ascii", "replace").strip() if raw else ""


def release_keeps_outputs(chip_label: str) -> tuple:
    """(keeps, why): whether this kernel leaves a released output line driven, and the fact that says so.
    `keeps` is None when the kernel has no such parameter, which means it returns released pins to inputs."""
    module = _PERSIST_MODULES.get(chip_label, "pinctrl_bcm2835")
    path = PERSIST_PARAMETER.format(module=module)
    raw = _read(path)
    if raw is None:
        return None, f"this kernel has no {path} (a kernel that returns released pins to inputs)"
    value = raw.decode("ascii", "replace").strip()
    keeps = value[:1] in ("Y", "y", "1")
    return keeps, f"{path} is {value}"


def describe() -> dict:
    """Board facts for status and check-config."""
    code = revision()
    return {"model": model(), "revision": code, "rp1": has_rp1(code)}
