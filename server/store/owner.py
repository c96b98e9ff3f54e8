"""One owner per embedded store file: an exclusive lock on ``<file>.lock`` for the life of the process.

SQLite would let a second process open the file, and that process's start-up recovery
would then fail the first one's running jobs as ``interrupted``. So the store takes
this lock before it writes anything. The kernel drops it when the process dies, however
it dies, so a crash never leaves a stale lock behind. The file says who holds it, for
the message the next process prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

from ..errors import StoreInUse


class OwnerLock:
    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.path = store_path + ".lock"
        self._fd: int | None = None

    def acquire(self, serving: str | None = None) -> None:
        """Take the lock, or raise :class:`StoreInUse` naming its holder. Raises OSError if the file cannot be made."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise StoreInUse(self.store_path, holder) from None
        self._fd = fd
        _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "serving": serving})

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _write(fd: int, owner: dict[str, object]) -> None:
    data = json.dumps(owner).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read(fd: int) -> dict[str, object]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, object]) -> str:
    """``jobcast process 4242 on web-1 (serving http://127.0.0.1:8000)``, with what the lock file tells."""
    if not owner.get("pid"):
        return "another process (it is starting, or wrote no details)"
    text = f"jobcast process {owner['pid']} on {owner.get('host') or 'this host'}"
    return f"{text} (serving {owner['serving']})" if owner.get("serving") else text
