"""One cycle at a time: overlapping runs (a slow collector, a manual run during cron) must not both act."""

from __future__ import annotations

import errno
import fcntl
import os
import time

from dreadpi.errors import LockedError

FILENAME = "lock"


class held:  # noqa: N801 (used like a function: `with lock.held(state_dir):`)
    """Hold the cycle lock; raise LockedError if another process keeps it longer than `wait` seconds.

    A class rather than @contextmanager, which would load contextlib on every cycle.
    """

    def __init__(self, state_dir: str, wait: float = 0.0) -> None:
        self.path = os.path.join(state_dir, FILENAME)
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    self.__exit__()
                    raise
            if time.monotonic() >= deadline:
                self.__exit__()
                raise LockedError(f"another dreadpi cycle is running (lock {self.path}); nothing was done")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
