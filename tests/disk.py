"""A real disk that fills up: a small tmpfs the test mounts, fills with a file, and frees again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import unavailable


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        """Write until the kernel says ENOSPC; the file stays until :meth:`free`."""
        with open(self._filler, "ab", buffering=0) as filler:  # unbuffered: nothing left to fail at close
            try:
                while True:
                    filler.write(b"\0" * 65536)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                os.fsync(filler.fileno())

    def free(self) -> None:
        self._filler.unlink()


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` at ``path``. Needs root (as in CI): in CI its absence fails, elsewhere it skips."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs for a full-disk test (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)
