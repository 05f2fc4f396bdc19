"""The collector sandbox, exercised for real as root: the child really is `nobody`, really is confined,
and really is gone after its timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dreadpi import sandbox
from dreadpi.errors import CollectorError


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def processes_with(marker: str) -> list:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture
def nobody(root):
    return sandbox.identity("nobody", "nogroup")


def test_the_collector_is_nobody_without_groups_privileges_or_environment(nobody, world_dir):
    secret = world_dir / "dreadpi.cfg"
    secret.write_text("[pvoutput]\napi_key = s3cret\n")
    secret.chmod(0o600)
    state = world_dir / "state"
    state.mkdir(mode=0o755)
    probe = script(world_dir, "probe", f"""
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "cwd=$(pwd)"
echo "env=$(env | grep -v '^PWD=' | wc -l)"
grep NoNewPrivs /proc/self/status
echo "as=$(ulimit -v) fsize=$(ulimit -f) cpu=$(ulimit -t) core=$(ulimit -c)"
echo "fds=$(ls /proc/self/fd | tr '\\n' ' ')"
cat {secret} >/dev/null 2>&1 && echo config=readable || echo config=unreadable
touch {state}/x 2>/dev/null && echo state=writable || echo state=unwritable
""")
    leaked = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaked, True)  # a careless parent descriptor: the sandbox must still not pass it on
    try:
        result = sandbox.run((probe,), b"", nobody, sandbox.Limits(timeout=10, memory_mb=64))
    finally:
        os.close(leaked)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "uid=65534 gid=65534 groups=65534\n" in out
    assert "cwd=/\n" in out
    assert "env=0\n" in out
    assert "NoNewPrivs:\t1" in out
    # dash reports the address space in KiB and the file size in 512-byte blocks.
    assert f"as={64 * 1024} fsize={sandbox.MAX_FILE_SIZE // 512} cpu=11 core=0" in out
    fds = out.split("fds=")[1].split("\n")[0].split()
    assert fds == ["0", "1", "2", "3"], fds  # 3 is ls's own listing of the directory
    assert "config=unreadable" in out
    assert "state=unwritable" in out
    assert not (state / "x").exists()


def test_settings_arrive_on_stdin_only(nobody, world_dir):
    echo = script(world_dir, "cat", "exec cat\n")
    result = sandbox.run((echo,), b'{"api_key": "k"}', nobody, sandbox.Limits(timeout=5))
    assert result.stdout == b'{"api_key": "k"}'


def test_a_hung_collector_and_its_children_are_killed_at_the_timeout(nobody, world_dir):
    marker = "3001.5"
    hang = script(world_dir, "hang", f"/bin/sleep {marker} &\n/bin/sleep {marker}\n")
    started = time.monotonic()
    with pytest.raises(CollectorError, match=r"timed out after 1 s"):
        sandbox.run((hang,), b"", nobody, sandbox.Limits(timeout=1))
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_a_child_left_holding_the_output_is_not_a_finished_collector(nobody, world_dir):
    marker = "3002.5"
    sneaky = script(world_dir, "sneaky", f"(/bin/sleep {marker} &)\necho 500\n")
    with pytest.raises(CollectorError, match="timed out"):
        sandbox.run((sneaky,), b"", nobody, sandbox.Limits(timeout=1))
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_endless_output_is_cut_off_not_buffered(nobody):
    started = time.monotonic()
    with pytest.raises(CollectorError, match="printed more than 65536 bytes"):
        sandbox.run(("/usr/bin/yes", "1000"), b"", nobody, sandbox.Limits(timeout=10))
    assert time.monotonic() - started < 5


def test_a_missing_program_is_a_clear_error(nobody):
    with pytest.raises(CollectorError, match="cannot start /nonexistent"):
        sandbox.run(("/nonexistent",), b"", nobody, sandbox.Limits())


def test_exit_status_and_stderr_explain_a_failure(nobody, world_dir):
    failing = script(world_dir, "fail", "echo 'no route to inverter' >&2\nexit 3\n")
    result = sandbox.run((failing,), b"", nobody, sandbox.Limits(timeout=5))
    assert sandbox.describe_exit(result) == "exited with status 3: no route to inverter"


def test_the_sandbox_user_may_not_be_root(root):
    with pytest.raises(CollectorError, match="never run as root"):
        sandbox.identity("root", "nogroup")
    with pytest.raises(CollectorError, match="does not exist"):
        sandbox.identity("no-such-user-here", "nogroup")


def test_a_long_lived_child_is_confined_alike_and_stopped_whole(nobody, world_dir):
    marker = "3003.5"
    service = script(world_dir, "service",
                     f"/bin/sleep {marker} &\nread line\n"
                     "echo \"got $line as $(id -u) $(grep NoNewPrivs /proc/self/status)"
                     " env=$(env | grep -v ^PWD= | wc -l)\"\n"
                     "while read more; do :; done\n")
    child = sandbox.spawn((service,), b"hello\n", nobody, memory_mb=64)
    try:
        out = b""
        while b"\n" not in out:
            out += os.read(child.stdout, 4096)
        assert out.decode() == "got hello as 65534 NoNewPrivs:\t1 env=0\n"
        assert len(processes_with(marker)) == 1  # it lives on, with its own child
    finally:
        code = child.stop()
    assert code in (0, -9)  # it saw end-of-file on stdin and ended, or was killed; its group is killed anyway
    time.sleep(0.2)
    assert processes_with(marker) == []
