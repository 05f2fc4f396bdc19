"""Bake a stand-in Raspberry Pi OS image (arm64, tests/fleet/piimage.py) with playbooks/image.yml, then look
inside it, and run a real cycle in it under emulation where Debian's arm64 RPi.GPIO drives an emulated
register page. ansible-playbook runs in a private mount namespace, so even a crashed bake leaves no mount.

The image has an RPi.GPIO package (Debian's python3-rpi.gpio), so the bake must run no apt at all; a second bake,
of the same root filesystem with Raspberry Pi OS's python3-rpi-lgpio instead (stand-ins, tests/fleet/debs.py),
must keep that one, again without apt."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root
from tests.fleet.simpi import ansible_env, playbook_argv, recap, task_results, write_inventory

WIFI_PSK = "example-wifi-psk-0123456789"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRyZWFkcGktaW1hZ2UtdGVzdC1rZXktMDEyMzQ1Njc4 installer@test"
COLLECTOR = "/usr/local/lib/dreadpi/collectors/whoami-collector"
UNIT = "etc/systemd/system/dreadpi-relay-hold.service"
WANTS = "etc/systemd/system/multi-user.target.wants/dreadpi-relay-hold.service"
APT_TASKS = ("Refresh the package lists, to see what the configured archives offer",
             "Install the Debian packages the configuration needs")
SETTINGS = {
    "dreadpi_image_hostname": "pi-baked",
    "dreadpi_image_user": "installer",
    "dreadpi_image_ssh_key": SSH_KEY,
    "dreadpi_image_enable_ssh": True,
    "dreadpi_image_wifi_ssid": "HomeNet",
    "dreadpi_image_wifi_psk": WIFI_PSK,
    "dreadpi_relays_backend": "rpi-gpio",
    "dreadpi_collector_scripts": [str(REPO / "tests/fleet/files/whoami-collector")],
    "dreadpi_script_command": f"{COLLECTOR} 350",
}


def bake(image: Path, workdir: Path, settings: dict) -> subprocess.CompletedProcess:
    inventory = write_inventory(workdir / f"inventory-{len(list(workdir.iterdir()))}", {})
    extra = workdir / "settings.json"
    extra.write_text(json.dumps({"dreadpi_image": str(image), **settings}))
    argv = playbook_argv(inventory, "image.yml", "-e", f"@{extra}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", *argv], capture_output=True,
                          text=True, env=ansible_env(workdir), cwd=REPO)


@pytest.fixture(scope="module")
def baked():
    require_root()
    from tests.fleet import piimage

    source = piimage.standin_image()
    workdir = Path(tempfile.mkdtemp(prefix="dreadpi-image-test-"))
    image = workdir / "pi.img"
    subprocess.run(["cp", "--sparse=always", str(source), str(image)], check=True)
    try:
        first = bake(image, workdir, SETTINGS)
        second = bake(image, workdir, SETTINGS)
        yield image, first, second
    finally:
        piimage.detach(image)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_bake_succeeds_and_a_second_one_changes_nothing(baked):
    _, first, second = baked
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
    assert any(counts["changed"] > 0 for counts in recap(first.stdout).values())
    assert all(counts["changed"] == 0 for counts in recap(second.stdout).values()), recap(second.stdout)


def installed(status: str) -> set:
    """The packages a dpkg status file says are installed."""
    return {block.split("\n", 1)[0][len("Package: "):] for block in status.split("\n\n")
            if "\nStatus: install ok installed" in block}


def apt_lists(root: Path) -> dict:
    lists = root / "var/lib/apt/lists"
    return {path.name: (path.stat().st_size, int(path.stat().st_mtime)) for path in lists.rglob("*") if path.is_file()}


def test_the_bake_keeps_debians_rpi_gpio_and_runs_no_apt(baked):
    from tests.fleet.piimage import arm64_rootfs, mounted

    _, first, second = baked
    for run in (first, second):
        for task in APT_TASKS:
            assert set(task_results(run.stdout, task).values()) <= {"skipping"}, task
    with mounted(baked[0]) as root:
        packages = installed((root / "var/lib/dpkg/status").read_text())
        assert "python3-rpi.gpio" in packages and "python3-rpi-lgpio" not in packages
        # dreadpi itself came as its .deb, through dpkg: apt installed nothing and refreshed no list.
        assert "dreadpi" in packages
        assert not (root / "var/log/apt/history.log").exists()
        assert apt_lists(root) == apt_lists(arm64_rootfs())


def test_no_mount_or_loop_device_is_left_behind(baked):
    image = baked[0]
    assert str(image) not in subprocess.run(["losetup", "--list"], capture_output=True, text=True).stdout
    assert "dreadpi-image-" not in Path("/proc/self/mounts").read_text()


def test_the_wifi_psk_is_never_printed(baked):
    _, first, second = baked
    assert WIFI_PSK not in first.stdout + first.stderr + second.stdout + second.stderr


def test_inside_the_image(baked):
    from tests.fleet.piimage import mounted

    with mounted(baked[0]) as root:
        def owner_mode(path: str) -> tuple:
            info = (root / path).lstat()
            return info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)

        assert owner_mode("etc/dreadpi/dreadpi.cfg") == (0, 0, "0o600")
        assert "backend = rpi-gpio" in (root / "etc/dreadpi/dreadpi.cfg").read_text()
        assert owner_mode("etc/cron.d/dreadpi") == (0, 0, "0o644")
        assert owner_mode("etc/logrotate.d/dreadpi") == (0, 0, "0o644")
        passwd = (root / "etc/passwd").read_text()
        assert "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin" in passwd
        assert (root / "etc/hostname").read_text() == "pi-baked\n"
        assert "127.0.1.1\tpi-baked" in (root / "etc/hosts").read_text()
        assert SSH_KEY in (root / "home/installer/.ssh/authorized_keys").read_text()
        assert owner_mode("etc/sudoers.d/010_installer-nopasswd")[2] == "0o440"
        assert (root / "etc/systemd/system/multi-user.target.wants/ssh.service").is_symlink()
        assert owner_mode("etc/NetworkManager/system-connections/dreadpi-wifi.nmconnection") == (0, 0, "0o600")
        assert "ssid=HomeNet" in (root / "etc/NetworkManager/system-connections/dreadpi-wifi.nmconnection").read_text()
        assert not (root / "usr/sbin/policy-rc.d").exists()  # the bake's temporary service policy is gone
        # The relay hold service: its unit, enabled offline so it starts at the first boot. The bake validated it
        # with the image's own systemd-analyze (under emulation); the image has one, so that check did run.
        assert owner_mode(UNIT) == (0, 0, "0o644")
        assert "ExecStart=/usr/bin/dreadpi relay-hold\n" in (root / UNIT).read_text()
        # Byte-compiled in the image by the package's postinst, by the image's own (emulated) Python.
        assert list((root / "usr/lib/dreadpi/dreadpi/__pycache__").glob("cli.cpython-3*.pyc"))
        assert (root / WANTS).is_symlink() and str((root / WANTS).readlink()) == "/" + UNIT
        assert (root / "usr/bin/systemd-analyze").exists()
        assert "hold = auto\n" in (root / "etc/dreadpi/dreadpi.cfg").read_text()


GPFSEL1, GPFSEL2, GPSET0, GPCLR0 = 1, 2, 7, 10


def test_a_real_cycle_in_the_image_under_emulation_drives_the_relays(baked, tmp_path):
    from tests.fleet.piimage import mounted

    with mounted(baked[0]) as root:
        fake = tmp_path / "fakepi"
        (fake / "dev").mkdir(parents=True)
        for name in ("null", "zero", "urandom", "random", "full"):
            (fake / "dev" / name).touch()
        page = fake / "dev/gpiomem"
        page.write_bytes(bytes(4096))
        (fake / "cpuinfo").write_text("processor\t: 0\nHardware\t: BCM2835\nRevision\t: a02082\n")
        binds = "".join(f"mount --bind /dev/{n} {fake}/dev/{n} && " for n in ("null", "zero", "urandom", "random",
                                                                               "full"))
        script = (f"mount --make-rprivate / && mount -t proc proc {root}/proc && {binds}"
                  f"mount --bind {fake}/cpuinfo {root}/proc/cpuinfo && mount --bind {fake}/dev {root}/dev && "
                  f"chroot {root} /usr/bin/dreadpi run; echo rc=$?")
        result = subprocess.run(["unshare", "--mount", "--pid", "--fork", "sh", "-c", script], capture_output=True,
                                text=True, timeout=300)
        assert "rc=0" in result.stdout, result.stdout + result.stderr
        assert " drm2 " in result.stdout
        words = struct.unpack("<1024I", page.read_bytes())
        assert (words[GPFSEL1] >> 21) & 7 == 1 and (words[GPFSEL2] >> 21) & 7 == 1  # GPIO17, GPIO27 outputs
        assert (words[GPSET0], words[GPCLR0]) == (1 << 17, 1 << 27)  # drm2: relay 1 energised, active high
        assert (root / "tmp/dreadpi-collector-id").read_text().strip() == \
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"


def test_a_failed_bake_still_unmounts_and_detaches_everything(root, tmp_path):
    from tests.fleet import piimage

    image = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", str(piimage.standin_image()), str(image)], check=True)
    try:
        result = bake(image, tmp_path, {**SETTINGS, "dreadpi_relays_backend": "gpio"})
        assert result.returncode != 0
        assert "The image was not baked" in result.stdout, result.stdout[-3000:]
        assert str(image) not in subprocess.run(["losetup", "--list"], capture_output=True, text=True).stdout
        assert "dreadpi-image-" not in Path("/proc/self/mounts").read_text()
        with piimage.mounted(image) as rootfs:
            assert not (rootfs / "etc/dreadpi").exists()  # refused before the role touched anything
            assert not (rootfs / "usr/sbin/policy-rc.d").exists()
    finally:
        piimage.detach(image)


def test_a_bake_of_a_root_filesystem_with_rpi_lgpio_keeps_it_and_runs_no_apt(root, tmp_path):
    """As a Raspberry Pi OS image has it: python3-rpi-lgpio and python3-lgpio (the stand-ins, tests/fleet/debs.py,
    installed with dpkg), baked with image.yml's dreadpi_image_rootfs through the chroot connection. The root
    filesystem is the simulated Pis' amd64 bookworm one, on an overlay in a private mount namespace: the decision
    is the same as for arm64, and natively the bake costs seconds, not the minutes of a bake under emulation
    (the stand-in lgpio is x86_64 code, which an arm64 image could not import anyway). The overlay's upper
    directory shows exactly what the preparation and the bake changed."""
    from tests.fleet import piimage, simpi
    from tests.fleet.debs import standin_debs

    simpi.ensure_host_tools()
    debs = standin_debs(simpi.host_arch())
    lines, merged = piimage.rootfs_namespace_script(simpi.rootfs(), tmp_path / "rootfs")
    staged = [debs["python3-lgpio"], debs["python3-rpi-lgpio"]]
    inventory = write_inventory(tmp_path / "inventory", {})
    extra = tmp_path / "settings.json"
    extra.write_text(json.dumps({"dreadpi_image_rootfs": str(merged), "dreadpi_relays_backend": "rpi-gpio"}))
    play = " ".join(playbook_argv(inventory, "image.yml", "-e", f"@{extra}"))
    script = "\n".join([
        *lines,
        f"mkdir {merged}/tmp/debs && cp {' '.join(str(path) for path in staged)} {merged}/tmp/debs/",
        f"chroot {merged} sh -c 'dpkg -i /tmp/debs/*.deb' >/dev/null",
        f"rm -r {merged}/tmp/debs",
        f"exec {play}",
    ])
    result = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script],
                            capture_output=True, text=True, env=ansible_env(tmp_path), cwd=REPO)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert all(counts["failed"] == 0 for counts in recap(result.stdout).values())
    for task in APT_TASKS:
        assert set(task_results(result.stdout, task).values()) <= {"skipping"}, task
    upper = tmp_path / "rootfs/upper"
    packages = installed((upper / "var/lib/dpkg/status").read_text())
    assert {"python3-rpi-lgpio", "python3-lgpio", "dreadpi"} <= packages and "python3-rpi.gpio" not in packages
    assert not (upper / "var/log/apt/history.log").exists()
    assert not (upper / "var/lib/apt/lists").exists() or not any((upper / "var/lib/apt/lists").rglob("*"))
    assert (upper / UNIT).exists() and (upper / WANTS).is_symlink()
    assert "hold = auto\n" in (upper / "etc/dreadpi/dreadpi.cfg").read_text()
