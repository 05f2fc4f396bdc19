"""Run a collector as an unprivileged, resource-limited process that cannot outlive its timeout.

Collectors talk to the network and parse what comes back; the cycle runs as root and drives mains
appliances. So the collector is a separate process: dropped to the sandbox user with no supplementary
groups, no_new_privs, limits on memory, CPU and file size, an empty environment, cwd `/`, no inherited
descriptors but its pipes, and its own process group, which is killed whole when it is done or times out.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import namedtuple

from dreadpi.errors import CollectorError

MAX_OUTPUT = 64 * 1024  # a reading is a few bytes; anything near this is a broken collector
MAX_STDIN = 60 * 1024  # a collector program and its settings fit a pipe buffer (64 KiB), so writing never blocks
MAX_FILE_SIZE = 1024 * 1024
_PR_SET_NO_NEW_PRIVS = 38
_EXEC_FAILED = 127

# subprocess is not used: it loads threading, selectors and locale, which cost a Pi Zero more than the rest of
# the cycle. One fork and exec, done here, with the same care: an exec-error pipe, restored signal dispositions,
# every descriptor closed but the three pipes.


class Limits(namedtuple("Limits", ("timeout", "memory_mb", "max_output"), defaults=(30.0, 256, MAX_OUTPUT))):
    __slots__ = ()
    timeout: float
    memory_mb: int
    max_output: int


class Identity(namedtuple("Identity", ("uid", "gid", "name", "dropped"))):
    """Who the collector runs as; `dropped` is False when the cycle is not root and cannot drop privileges."""

    __slots__ = ()
    uid: int
    gid: int
    name: str
    dropped: bool


class Result(namedtuple("Result", ("returncode", "stdout", "stderr", "identity"))):
    __slots__ = ()
    returncode: int
    stdout: bytes
    stderr: bytes
    identity: Identity


def identity(user: str, group: str) -> Identity:
    """The sandbox identity for this process: the configured user when root, else the current user."""
    import pwd

    if os.geteuid() != 0:
        return Identity(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, dropped=False)
    import grp

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise CollectorError(f"sandbox: user {user!r} does not exist (collector.user)") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise CollectorError(f"sandbox: group {group!r} does not exist (collector.group)") from None
    if uid == 0 or gid == 0:
        raise CollectorError(f"sandbox: {user}:{group} is root; collectors never run as root")
    return Identity(uid, gid, user, dropped=True)


def _confiner(memory_mb: int, cpu_seconds: int):  # noqa: ANN202
    """The confinement the child applies to itself before exec.

    Everything it needs is loaded now, in the parent: after the drop the child may not be able to read the
    interpreter's own library directory.
    """
    import ctypes
    import resource

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    memory = memory_mb * 1024 * 1024
    limits = (
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1)),
        (resource.RLIMIT_FSIZE, (MAX_FILE_SIZE, MAX_FILE_SIZE)),
        (resource.RLIMIT_CORE, (0, 0)),
    )
    setrlimit = resource.setrlimit

    def confine() -> None:
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        for which, value in limits:
            setrlimit(which, value)

    return confine


def run(argv: tuple, stdin: bytes, who: Identity, limits: Limits) -> Result:
    """Run argv confined; return its output once every holder of its pipes has closed them.

    Output is complete only at end-of-file, so a collector that leaves a child holding its stdout has not
    finished, and runs into the timeout like one that hangs.
    """
    if len(stdin) > MAX_STDIN:
        raise CollectorError(f"settings for the collector exceed {MAX_STDIN} bytes")
    confine = _confiner(limits.memory_mb, max(1, int(limits.timeout) + 1))
    deadline = time.monotonic() + limits.timeout
    pid, to_child, from_child = _spawn(list(argv), who, confine)
    try:
        os.write(to_child, stdin)
    except BrokenPipeError:
        pass  # the collector did not want its settings; its exit status will say more
    finally:
        os.close(to_child)
    try:
        outputs, failure = _read_until_closed(from_child, deadline, limits)
        if not failure and not _exited(pid, deadline):
            failure = f"timed out after {limits.timeout:g} s"
    finally:
        for fd in from_child:
            os.close(fd)
        # Not reaped yet: the collector (or its zombie) still holds its pid and group id, so the kill cannot
        # reach an unrelated process that reused them.
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
    if failure:
        # A collector that ran out of time was waiting on its source; one that printed too much is broken.
        raise CollectorError(failure, "unreachable" if failure.startswith("timed out") else "bad-answer")
    return Result(os.waitstatus_to_exitcode(status), outputs[0], outputs[1], who)


class Child:
    """A confined process that lives on (see `spawn`): its pid, which is also its session and process group, the
    write end of its stdin and the read ends of its stdout and stderr, all non-inheritable."""

    def __init__(self, pid: int, stdin: int, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def stop(self) -> int:
        """Close its pipes, kill its whole group, reap it; its exit code (negative: the signal)."""
        for fd in (self.stdin, self.stdout, self.stderr):
            try:
                os.close(fd)
            except OSError:
                pass
        _kill_group(self.pid)  # not reaped yet: the group id cannot belong to anyone else
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def spawn(argv: tuple, stdin: bytes, who: Identity, memory_mb: int, cpu_seconds: int = 3600) -> Child:
    """Start argv confined exactly as `run` does, for a service that talks to the network for as long as it
    runs: the same user, limits and empty environment, its own session. It is given `stdin` and keeps the pipe
    open, so that it sees end-of-file when its parent goes; the caller reads its output as it comes and must
    `stop()` it. `cpu_seconds` bounds a runaway: a child that used them up dies, and the caller starts another."""
    if len(stdin) > MAX_STDIN:
        raise CollectorError(f"the input for {argv[0]} exceeds {MAX_STDIN} bytes")
    pid, to_child, (out, err) = _spawn(list(argv), who, _confiner(memory_mb, cpu_seconds))
    child = Child(pid, to_child, out, err)
    try:
        os.write(to_child, stdin)  # fits the pipe buffer (MAX_STDIN), so this never blocks
    except BrokenPipeError:
        pass  # it exited at once; its output and exit code will say why
    return child


def _spawn(argv: list, who: Identity, confine) -> tuple:  # noqa: ANN001
    """Fork and exec argv as `who` in a new session; (pid, stdin fd, (stdout fd, stderr fd))."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    exec_r, exec_w = os.pipe()  # close-on-exec: EOF without data means the exec succeeded
    pid = os.fork()
    if pid == 0:  # the child: only system calls from here until exec
        try:
            os.setsid()
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, exec_w)
            os.closerange(exec_w + 1, 65536)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)  # Python ignores them; the collector must not inherit that
            os.chdir("/")
            if who.dropped:
                os.setgroups([])
                os.setresgid(who.gid, who.gid, who.gid)
                os.setresuid(who.uid, who.uid, who.uid)
            confine()
            os.execve(argv[0], argv, {})  # noqa: S606 (no shell, by design)
        except BaseException as err:  # noqa: BLE001 (anything at all must reach the parent, then exit)
            message = getattr(err, "strerror", None) or str(err) or err.__class__.__name__
            os.write(exec_w, message.encode("utf-8", "replace")[:512])
        finally:
            os._exit(_EXEC_FAILED)
    for fd in (in_r, out_w, err_w, exec_w):
        os.close(fd)
    with os.fdopen(exec_r, "rb") as errors:
        failed = errors.read()
    if failed:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        os.waitpid(pid, 0)
        raise CollectorError(f"cannot start {argv[0]}: {failed.decode('utf-8', 'replace')}")
    return pid, in_w, (out_r, err_r)


def _read_until_closed(fds: tuple, deadline: float, limits: Limits) -> tuple:
    """((stdout, stderr), failure): read both pipes to end-of-file, within the deadline and the size limit."""
    buffers = {fd: bytearray() for fd in fds}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    open_fds = set(fds)
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return (b"", b""), f"timed out after {limits.timeout:g} s"
        for fd, _ in poller.poll(remaining * 1000):
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            buffers[fd] += chunk
            if len(buffers[fd]) > limits.max_output:
                return (b"", b""), f"printed more than {limits.max_output} bytes"
    return (bytes(buffers[fds[0]]), bytes(buffers[fds[1]])), None


def _exited(pid: int, deadline: float) -> bool:
    """Whether the child exits by the deadline; it is left unreaped (WNOWAIT) for the group kill.

    Its pipes are already closed, so it is normally exiting this very moment: poll soon, then back off.
    """
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    pause = 0.0001
    while os.waitid(os.P_PID, pid, flags) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(result: Result) -> str | None:
    """Why a finished collector failed, from its exit status and the last line it wrote to stderr."""
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name if -result.returncode in signal.valid_signals() else "?"
        why = f"killed by {name}"
    else:
        why = f"exited with status {result.returncode}"
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    if lines:
        why += f": {lines[-1][:200]}"
    return why
