"""Where we may write: never onto a base model or a source, never over an output unasked.

`check_destination` runs before anything is written (and before any long computation a caller
can do after it). A protected path (the base a model came from, the run an export reads) is
refused whatever `overwrite` says, and so is any path inside it or holding it; an existing
destination is refused unless `overwrite=True`.
"""
from pathlib import Path
import typing as tp

from .errors import OverwriteError
from .exported_layout import COMPRESSION_FILE, LM_FILE
from .extension_files import kind_of

PathLike = tp.Union[str, Path]


def _what_is_at(path: Path) -> str:
    if kind_of(path) is not None:
        return 'an extension written by ExtendedMusicGen.save'
    if path.is_dir() and ((path / LM_FILE).exists() or (path / COMPRESSION_FILE).exists()):
        return 'an exported MusicGen'
    return 'a directory' if path.is_dir() else 'a file'


def check_destination(destination: PathLike, protected: tp.Mapping[PathLike, str] = {},
                      overwrite: bool = False) -> Path:
    """Refuse to write `destination` over something it must not replace; returns it resolved.

    Args:
        destination: the file or directory about to be written.
        protected: path -> what it is ('the base model', 'the training run it exports'), never
            written, replaced or written into.
        overwrite (bool): replace an existing destination that is not protected.
    Raises:
        OverwriteError: the write would replace or write into a protected path, or the
            destination exists and `overwrite` is False.
    """
    target = Path(destination).expanduser().resolve()
    for path, what in protected.items():
        path = Path(path).expanduser().resolve()
        if target == path or target in path.parents or (path.is_dir() and path in target.parents):
            relation = 'is' if target == path else 'holds' if target in path.parents else 'is inside'
            raise OverwriteError(f"Refusing to write {target}: it {relation} {what} ({path}), which is never written. "
                                 "Choose another path.")
    if target.exists() and not overwrite:
        raise OverwriteError(f"{target} already exists ({_what_is_at(target)}): choose another path, or pass "
                             "overwrite=True (command line: --overwrite) to replace it.")
    return target
