"""One training run per experiment folder, and checkpoint writes that survive a crash.

- `RunLock`: two runs with the same signature would overwrite each other's checkpoints; Dora 0.1
  has no such lock, filelock takes it.
- `save_checkpoint_atomically`: the solver's checkpoints go through `io.atomic` (temporary file,
  fsync, rename). AudioCraft's own save (flashy's `write_and_rename`) renames too but never
  fsyncs, so after a crash of the machine the renamed file can be empty on some file systems;
  `remove_stale_temporaries` removes what a killed save left.
"""
import logging
import os
from pathlib import Path
import socket
import typing as tp

import filelock
import flashy

from ..io.atomic import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

LOCK_NAME = 'training.lock'


class RunLockedError(RuntimeError):
    """Another process is training the same experiment (same folder, i.e. same signature)."""


class RunLock:
    """An exclusive lock on an experiment folder, held while a training run is alive.

    `filelock.FileLock` on `folder/training.lock`: `flock`, which the kernel releases when the
    process dies in any way (SIGKILL included), so a lock is never stale. On file systems without
    `flock` (some network file systems) filelock falls back to a marker file with the holder's pid
    and host, which a contender on the same host removes once that process is gone. The holder
    writes its host and pid to `training.lock.holder`, for the error message of the next run.
    """
    def __init__(self, folder: tp.Union[str, Path]):
        self.path = Path(folder) / LOCK_NAME
        self.holder_path = self.path.with_name(LOCK_NAME + '.holder')
        self._lock = filelock.FileLock(str(self.path))

    def _holder(self) -> str:
        try:
            return self.holder_path.read_text().strip() or 'unknown process'
        except OSError:
            return 'unknown process'

    def acquire(self) -> 'RunLock':
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunLockedError(
                f"Another training run holds {self.path} ({self._holder()}): two runs with the same signature would "
                "overwrite each other's checkpoints. Wait for it to finish or stop it; to train a second "
                "experiment, change an override (e.g. label=run2) or dora.dir.") from None
        atomic_write_text(self.holder_path, f'host={socket.gethostname()} pid={os.getpid()}\n')
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc: tp.Any) -> None:
        self.release()


def remove_stale_temporaries(folder: tp.Union[str, Path]) -> tp.List[Path]:
    """Remove checkpoint temporaries that a killed save left behind (only call under the run lock)."""
    removed = []
    folder = Path(folder)
    for pattern in ('.checkpoint*.tmp', 'checkpoint*.th.tmp'):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("Removed %d unfinished checkpoint file(s) of an interrupted save: %s",
                    len(removed), ', '.join(p.name for p in removed))
    return removed


def save_checkpoint_atomically(state: tp.Any, checkpoint_path: Path, is_sharded: bool = False) -> None:
    """Drop-in for `audiocraft.utils.checkpoint._safe_save_checkpoint`; sharded (fsdp.use), every rank
    writes its own `checkpoint.th.RANK` and waits for the others."""
    atomic_torch_save(state, checkpoint_path)
    if is_sharded:
        flashy.distrib.barrier()
