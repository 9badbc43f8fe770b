"""Reading PyTorch files that users hand us, without ever running code from them.

`torch.load(weights_only=True)` rebuilds tensors and plain containers only, whatever the
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` environment variable says (it is passed explicitly). AudioCraft's
training checkpoints also pickle OmegaConf configs and a `defaultdict` (EMA state): those classes,
data containers that run no code of the file, are allow-listed (`omegaconf_safe_globals`). A file
that needs anything else is refused with `UnsafeFileError`, unless the caller opts in with
`allow_pickle=True` for a file they trust (docs/SECURITY.md).
"""
import collections
from contextlib import contextmanager
import logging
from pathlib import Path
import pickle
import typing as tp

from omegaconf import DictConfig, ListConfig
import torch

from .errors import CheckpointError, UnsafeFileError

logger = logging.getLogger(__name__)

PathLike = tp.Union[str, Path]


def omegaconf_safe_globals() -> tp.List[tp.Any]:
    """Classes that an OmegaConf config (and AudioCraft's EMA state) pickle refers to."""
    import typing
    from omegaconf import base, nodes
    node_classes = [getattr(nodes, name) for name in dir(nodes)
                    if isinstance(getattr(nodes, name), type) and issubclass(getattr(nodes, name), nodes.Node)]
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, typing.Any, dict, list, int,
            float, str, bool, collections.defaultdict, collections.OrderedDict, *node_classes]


@contextmanager
def allow_omegaconf_in_torch_load() -> tp.Iterator[None]:
    """`torch.load(weights_only=True)` inside this block also accepts pickled OmegaConf configs."""
    with torch.serialization.safe_globals(omegaconf_safe_globals()):
        yield


def check_readable_file(path: PathLike, what: str) -> Path:
    """`path` exists, is a file and is not empty; else a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a {what} file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it was not written completely. "
                              "Use another copy or write it again.")
    return path


def read_torch_file(path: PathLike, what: str = 'checkpoint', allow_pickle: bool = False,
                    mmap: bool = False) -> tp.Any:
    """`torch.load` a file on CPU with `weights_only=True` (OmegaConf allow-listed).

    Args:
        path: the file.
        what (str): what the file should be, for error messages.
        allow_pickle (bool): for a file that needs full unpickling, load it anyway; only for files
            from a source you trust, since unpickling can run any code. Default: refuse it.
        mmap (bool): map the file instead of reading it (a cheap look at a large file).
    Raises:
        UnsafeFileError: the file needs full unpickling and `allow_pickle` is False.
        CheckpointError: the file is not a readable PyTorch file.
    """
    path = check_readable_file(path, what)
    try:
        with allow_omegaconf_in_torch_load():
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if not str(error).startswith('Weights only load failed'):
            raise CheckpointError(f"{path} is not a readable PyTorch {what} ({error}). It may be truncated "
                                  "or of another kind; use another copy.") from None
        if not allow_pickle:
            # torch names what it refused, e.g. "Trying to load unsupported GLOBAL posix.system ...".
            details = [line.strip() for line in str(error).splitlines() if 'GLOBAL' in line or 'global' in line]
            detail = details[0][:200] if details else 'it refers to Python objects beyond tensors and plain data'
            raise UnsafeFileError(
                f"{path} can only be loaded by full unpickling ({detail}), which runs whatever code "
                f"the file carries, and was refused: a {what} needs only tensors and plain data. If you "
                "trust its source, load it with allow_pickle=True (API), --allow-pickle (audiocraft-ext "
                "commands) or allow_pickle=true (training); see docs/SECURITY.md.") from None
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable PyTorch {what} ({type(error).__name__}: {error}). "
                              "It may be truncated or of another kind; use another copy.") from None
    logger.warning("Unpickling %s (allow_pickle=True): this runs any code the file carries.", path)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable PyTorch {what} ({type(error).__name__}: {error}).") from None
