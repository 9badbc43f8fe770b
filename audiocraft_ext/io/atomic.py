"""Atomic writes: a file or a whole directory appears complete or not at all.

Files are written to a temporary file beside the destination, fsynced, then renamed over it.
Directories (a model of several files) are written into a temporary sibling directory, then put
in place in one step: on Linux `renameat2(RENAME_EXCHANGE)` swaps an existing destination with
the new one atomically; elsewhere the old directory is first renamed aside, so after a crash the
destination holds the old result, the new one, or nothing while the old one waits beside it,
never a mix of the two.
"""
from contextlib import contextmanager
import ctypes
import errno
import os
from pathlib import Path
import shutil
import typing as tp
import uuid

PathLike = tp.Union[str, Path]

_RENAME_EXCHANGE = 2  # linux/fs.h


def _temporary_sibling(path: Path, suffix: str = 'tmp') -> Path:
    return path.parent / f'.{path.name}.{uuid.uuid4().hex[:12]}.{suffix}'


def _plain_file_mode(folder: Path) -> int:
    """The mode a plain `open(path, 'w')` gives a new file in `folder` (0o666 minus the umask)."""
    probe = _temporary_sibling(folder / 'mode')
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def _fsync_directory(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: PathLike, fsync: bool = True) -> tp.Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is fsynced and renamed to `path`.

    The temporary is created with mode 0o666 minus the umask, like a plain `open(path, 'wb')`.
    On any error it is removed and `path` is left as it was. `fsync=False` (for caches, where a
    file lost in a crash is only recomputed) skips the flushes to disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            with open(tmp, 'rb+') as file:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(path.parent)


def atomic_write(path: PathLike, write: tp.Callable[[tp.BinaryIO], tp.Any], fsync: bool = True) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then put it at `path` (`atomic_path`)."""
    with atomic_path(path, fsync) as tmp, open(tmp, 'wb') as file:
        write(file)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_torch_save(obj: tp.Any, path: PathLike) -> Path:
    """`torch.save(obj)` to `path`, atomically (solver checkpoints, feature-cache entries)."""
    import torch
    return atomic_write(path, lambda file: torch.save(obj, file))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2); False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def replace_directory(new: PathLike, destination: PathLike) -> Path:
    """Put the complete directory `new` at `destination`, replacing what is there in one step."""
    new, destination = Path(new), Path(destination)
    if not destination.exists():
        os.rename(new, destination)
    elif destination.is_dir() and _exchange(new, destination):
        shutil.rmtree(new)  # `new` now holds the old content
    else:
        aside = _temporary_sibling(destination, 'old')
        os.rename(destination, aside)
        os.rename(new, destination)
        if aside.is_dir():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    _fsync_directory(destination.parent)
    return destination


@contextmanager
def atomic_directory(destination: PathLike) -> tp.Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `destination` whole.

    On an error the temporary directory is removed and `destination` is untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(destination)
    tmp.mkdir()
    try:
        yield tmp
        mode = _plain_file_mode(tmp)
        for path in tmp.rglob('*'):
            if path.is_file():
                os.chmod(path, mode)  # some writers (safetensors) create files private (0o600)
                with open(path, 'rb') as file:
                    os.fsync(file.fileno())
        replace_directory(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
