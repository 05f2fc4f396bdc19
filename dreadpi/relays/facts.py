"""What the relays run on, in facts a person can check on the Pi: for `status` and `check-config`.

Reading these touches no pin: files under /proc and /sys, and the kernel's line info.
"""

from __future__ import annotations

from dreadpi import hardware
from dreadpi.errors import RelayError


def describe(settings, state_dir: str) -> dict:  # noqa: ANN001 (config.RelaySettings)
    facts = {"backend": settings.backend, **hardware.describe()}
    if settings.backend == "sim":
        return facts
    from dreadpi.relays import hold

    if settings.backend == "rpi-gpio":
        from dreadpi.relays.rpi_gpio import provider

        facts["library"] = provider()
    if not hold.gpiochip_based(settings.backend):
        facts["kept_by"] = "GPIO registers" if facts.get("library") else None
        return facts
    try:
        keeps, why, chip = hold.kernel_keeps_outputs()
    except RelayError as err:
        facts["problem"] = str(err)
        return facts
    facts.update(chip=chip, kernel_keeps_outputs=keeps, kernel_keeps_outputs_why=why)
    service = hold.HoldClient(f"{state_dir}/{hold.SOCKET}", settings.pins).available()
    if service and settings.hold != "no":
        facts["kept_by"] = "relay hold service"
    elif keeps and settings.hold != "yes":
        facts["kept_by"] = "kernel"
    else:
        facts["kept_by"] = None
        facts["problem"] = ("relays.hold = yes, and the relay hold service is not running" if settings.hold == "yes"
                            else f"nothing keeps the relays driven between cycles: {why}; run the relay hold "
                                 f"service (dreadpi-relay-hold) or, on Raspberry Pi OS, remove dtparam=strict_gpiod")
    return facts


def sentences(facts: dict) -> list:
    """One line each, for people."""
    board = facts.get("model") or "not a Raspberry Pi (no device-tree model)"
    if facts.get("revision"):
        board += f", revision {facts['revision']}"
    lines = [f"board: {board}", f"relays: backend {facts['backend']}"]
    if facts["backend"] == "rpi-gpio":
        lines[-1] += f", RPi.GPIO from {facts.get('library') or 'nowhere (not installed)'}"
    if facts.get("chip"):
        lines[-1] += f", header on {facts['chip']}"
        keeps = "yes" if facts["kernel_keeps_outputs"] else "no"
        lines.append(f"relays: kernel keeps released outputs: {keeps} ({facts['kernel_keeps_outputs_why']})")
    if facts.get("kept_by"):
        lines.append(f"relays: levels kept between cycles by the {facts['kept_by']}")
    if facts.get("problem"):
        lines.append(f"relays: problem: {facts['problem']}")
    return lines
