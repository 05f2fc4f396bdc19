"""A stand-in for a Raspberry Pi OS image, since the build machine cannot download one.

An arm64 Debian bookworm root filesystem (debootstrap, second stage under qemu-user-static; Debian's arm64
archive has python3-rpi.gpio; systemd installed but, as in any image, not running) packed into a small
partitioned image laid out like Raspberry Pi OS: an MBR with a FAT32 boot partition and an ext4 root, the boot
partition mounted at /boot/firmware. Built once (minutes) and cached; tests bake a sparse copy. A variant with
Debian's ansible-core and git (standin_image(pull=True)) is for baking pull enrolment without the network.

Where the kernel cannot mount FAT (some CI and VM kernels are built without it, and have no modules to load),
the boot partition is ext2 instead, and a line on stderr says so: the playbook mounts it the same way (mount
detects the type), so the path under test is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tests.fleet.simpi import CACHE, HarnessError, cached_rootfs, complete_rootfs, run

ARCH = "arm64"
PACKAGES = ("python3", "python3-apt", "python3-rpi.gpio", "openssh-server", "sudo", "cron", "logrotate",
            "ca-certificates", "systemd")
IMAGE_SETUP = 1
PULL_PACKAGES = ("ansible-core", "git")
PULL_SETUP = 1  # bump when arm64_pull_rootfs changes, to rebuild its cache
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support",
         "mkfs.vfat": "dosfstools", "sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs", "debootstrap": "debootstrap"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_foreign_binaries() -> None:
    """Make arm64 programs runnable here, or say exactly why they cannot be."""
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        run("apt-get", "update", "-qq")
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    if not (BINFMT / "status").exists():
        raise HarnessError("this machine cannot run foreign binaries: binfmt_misc is not available in its kernel "
                           "(mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc failed)")
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    handler = BINFMT / "qemu-aarch64"
    if not handler.exists() or "enabled" not in handler.read_text():
        raise HarnessError("this machine cannot run arm64 binaries: the qemu-aarch64 binfmt handler is not "
                           "registered (update-binfmts --enable qemu-aarch64 failed)")


def _like_pi_os(root: Path) -> None:
    (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
    (root / "etc/fstab").write_text("LABEL=rootfs / ext4 defaults,noatime 0 1\n"
                                    "LABEL=bootfs /boot/firmware vfat defaults 0 2\n")
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")


def arm64_rootfs() -> Path:
    return cached_rootfs(ARCH, PACKAGES, IMAGE_SETUP, _like_pi_os, note=" (arm64 under emulation: minutes)")


def arm64_pull_rootfs() -> Path:
    """The stand-in's root filesystem plus what pull enrolment installs (Debian's ansible-core and git; openssh-client
    comes with openssh-server), so a bake with pull enrolment finds them and needs no network. Derived from the cached
    rootfs (a copy, then apt under emulation, the package lists refreshed first), not debootstrapped again: it costs
    only the install, and is cached beside it."""
    base = arm64_rootfs()
    key = hashlib.sha256(f"{base.name} {' '.join(PULL_PACKAGES)} {PULL_SETUP}".encode()).hexdigest()[:12]
    path = CACHE / f"{base.name}-pull-{key}"
    if (path / ".dreadpi-complete").exists():
        return path
    building = path.with_name(path.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    print(f"building {path} from {base.name} (once; cached after; apt under emulation: minutes)", file=sys.stderr,
          flush=True)
    run("cp", "-a", "--reflink=auto", str(base), str(building))
    (building / ".dreadpi-complete").unlink()
    # The host's resolver, for this build only (bound over the copy's, which is restored below by the unmount).
    install = (f"mount --make-rprivate / && mount -t proc proc {building}/proc && mount --rbind /dev {building}/dev && "
               f"mount --bind /etc/resolv.conf {building}/etc/resolv.conf && "
               f"chroot {building} apt-get update -qq && "
               f"chroot {building} apt-get install -y -q --no-install-recommends {' '.join(PULL_PACKAGES)} && "
               f"chroot {building} apt-get clean")
    run("unshare", "--mount", "sh", "-c", install, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return complete_rootfs(building, path)


def rootfs_namespace_script(lower: Path, workdir: Path) -> tuple:
    """(shell lines, root): mount an overlay of `lower` at workdir/merged with its changes in workdir/upper, for a
    script run in a private mount namespace (`unshare --mount`), where every mount ends with the script."""
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    return (["set -e", "mount --make-rprivate /",
             f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged}"], merged)


def kernel_mounts_vfat() -> bool:
    if "vfat" in Path("/proc/filesystems").read_text():
        return True
    release = os.uname().release
    return any(Path(f"/lib/modules/{release}/kernel/fs/fat").glob("vfat.ko*"))


def standin_image(pull: bool = False) -> Path:
    """The cached stand-in image: 1.5 GiB sparse, p1 FAT32 'bootfs' (128 MiB), p2 ext4 'rootfs'; with `pull`, its
    root filesystem has ansible-core and git (arm64_pull_rootfs)."""
    ensure_foreign_binaries()
    rootfs = arm64_pull_rootfs() if pull else arm64_rootfs()
    boot_fs = "vfat" if kernel_mounts_vfat() else "ext2"
    if boot_fs != "vfat":
        print("piimage: this kernel cannot mount FAT; the stand-in's boot partition is ext2", file=sys.stderr)
    image = CACHE / f"{rootfs.name}-boot-{boot_fs}.img"
    if image.exists():
        return image
    building = image.with_name(image.name + ".building")
    building.unlink(missing_ok=True)
    run("truncate", "-s", "1536M", str(building))
    layout = "label: dos\nstart=8192, size=262144, type=c\nstart=270336, type=83\n"  # as Pi OS: FAT32 LBA, Linux
    run("sfdisk", "--quiet", str(building), input=layout)
    loop = attach(building)
    try:
        run("mkfs.ext4", "-q", "-L", "rootfs", "-d", str(rootfs), f"{loop}p2")
        with tempfile.TemporaryDirectory() as boot:
            Path(boot, "config.txt").write_text("# stand-in for Raspberry Pi OS\narm_64bit=1\n")
            Path(boot, "cmdline.txt").write_text("console=tty1 root=LABEL=rootfs rootfstype=ext4 rootwait\n")
            if boot_fs == "vfat":
                run("mkfs.vfat", "-F", "32", "-n", "bootfs", f"{loop}p1")
                with tempfile.TemporaryDirectory() as mnt:
                    run("mount", f"{loop}p1", mnt)
                    try:
                        for name in ("config.txt", "cmdline.txt"):
                            shutil.copy(Path(boot, name), Path(mnt, name))
                    finally:
                        run("umount", mnt)
            else:
                run("mkfs.ext2", "-q", "-L", "bootfs", "-d", boot, f"{loop}p1")
    finally:
        release(loop)
    building.rename(image)
    return image


def attach(image: Path) -> str:
    """A loop device for the image with its partition devices present. Some kernels ignore --partscan (no
    partitions appear, and there is no udev to help), so partx reads the table when it did not happen."""
    loop = run("losetup", "--find", "--show", "--partscan", str(image)).stdout.strip()
    if not Path(f"{loop}p2").exists():
        subprocess.run(["partx", "--add", loop], capture_output=True)
    deadline = time.monotonic() + 10
    while not Path(f"{loop}p2").exists():
        if time.monotonic() > deadline:
            release(loop)
            raise HarnessError(f"no partition devices appeared for {image} on {loop}")
        time.sleep(0.1)
    return loop


def release(loop: str) -> None:
    subprocess.run(["partx", "--delete", loop], capture_output=True)
    subprocess.run(["losetup", "--detach", loop], capture_output=True)


def detach(image: Path) -> None:
    """Detach every loop device still backed by `image` (after a bake that was killed)."""
    for line in run("losetup", "--associated", str(image), check=False).stdout.splitlines():
        release(line.split(":")[0])


@contextmanager
def mounted(image: Path):
    """The image's root filesystem (boot partition at boot/firmware), mounted read-write for inspection."""
    loop = attach(image)
    root = Path(tempfile.mkdtemp(prefix="dreadpi-inspect-"))
    mounts = []
    try:
        run("mount", f"{loop}p2", str(root))
        mounts.append(root)
        run("mount", f"{loop}p1", str(root / "boot/firmware"))
        mounts.append(root / "boot/firmware")
        yield root
    finally:
        for path in reversed(mounts):
            subprocess.run(["umount", str(path)], capture_output=True)
        release(loop)
        root.rmdir()
