"""One writer per run directory: an exclusive lock held for the whole run.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file ``<run>/.lock``, which also holds who took it
(``pid host time``) so that a refused second writer can name the holder.  The kernel drops a flock when its
process ends, however it ends (SIGKILL included), so the lock of a dead process is simply taken over by the
next run: there is no stale lock to clean up, and the text left in the file is overwritten.  The lock file is
never deleted (deleting it would let a third process lock a fresh file while the second still holds the old
one); ``force=true`` replaces everything in the run directory but it.

flock works on local filesystems and on most network filesystems (NFS v4 maps it onto its own locks); on a
filesystem without locks at all, :meth:`RunLock.acquire` fails with one line rather than run unprotected.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory; the message is one line naming it and the fix."""


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (making the run directory if needed), or raise :class:`RunLockedError`."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{self.run_dir} is being written by another process ({holder}); wait for it to "
                    "finish or stop it, or set runs_root=<another folder>"
                ) from None
            raise RunLockedError(
                f"{self.run_dir} cannot be locked ({error.strerror}); put runs_root on a filesystem with "
                "file locks"
            ) from None
        os.ftruncate(fd, 0)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, (holder + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it now: a later refusal cannot name us
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
