"""One resolver for every way of naming a base: what it is and where, before anything is built.

A reference is resolved to a `BaseSource` (a kind and a local location); models are built from
it by `audiocraft_ext.models.bases`. Accepted references:

    facebook/musicgen-small, small     a Hugging Face repo in AudioCraft's exported layout
    user/my-extension                  a Hugging Face repo holding an extension directory
    /path/to/exported_dir              state_dict.bin + compression_state_dict.bin (a hub snapshot)
    /path/to/extension(.safetensors)   an extension written by ExtendedMusicGen.save (or a legacy .pt)
    /path/to/checkpoint.th             an AudioCraft MusicGen training checkpoint, or one of
                                       ExtendedMusicGenSolver (also its XP folder)
    //sig/SIG                          a run of ExtendedMusicGenSolver in a Dora folder (`dora_dir`)
    //pretrained/NAME                  AudioCraft's notation: NAME is any of the above
    //tiny/FLAVOUR[/SEED], debug       tiny random models for tests and debugging

Hub repos go through `huggingface_hub` (its cache, `HF_HUB_OFFLINE`, `revision`), with
`AUDIOCRAFT_CACHE_DIR` as cache folder when set, as AudioCraft's own loaders do.
"""
from dataclasses import dataclass
import os
from pathlib import Path
import re
import typing as tp

from .errors import CheckpointError
from .extension_files import CONFIG_NAME, kind_of
from .torch_files import read_torch_file

SIG_PREFIX = '//sig/'
TINY_PREFIX = '//tiny/'
PRETRAINED_PREFIX = '//pretrained/'
SOLVER_CHECKPOINT_FORMAT = 'audiocraft_ext.solver_checkpoint'
EXPORTED_FILES = ('state_dict.bin', 'compression_state_dict.bin')

# MusicGen's short names, as `MusicGen.get_pretrained` maps them.
SHORT_NAMES = {'small': 'facebook/musicgen-small', 'medium': 'facebook/musicgen-medium',
               'large': 'facebook/musicgen-large', 'melody': 'facebook/musicgen-melody'}
_HUB_ID = re.compile(r'^[\w.-]+/[\w.-]+$')
_FILE_SUFFIXES = ('.pt', '.th', '.bin', '.pth', '.ckpt', '.safetensors')

KINDS = ('musicgen', 'extension', 'audiocraft_checkpoint', 'solver_checkpoint', 'tiny', 'debug')


@dataclass(frozen=True)
class BaseSource:
    """A resolved base reference.

    Attributes:
        kind (str): one of `KINDS`.
        location (Path or str): the local file or directory (a hub repo is downloaded first);
            the spec after `//tiny/` for 'tiny'; 'debug' for 'debug'.
        reference (str): how to find it again, stored in saved files: a hub id, an absolute
            path, or `//tiny/...` / `debug`.
    """
    kind: str
    location: tp.Union[Path, str]
    reference: str


def is_hub_id(text: str) -> bool:
    """'org/name' (not a file name like 'runs/model.pt') or one of MusicGen's short names."""
    return text in SHORT_NAMES or (bool(_HUB_ID.match(text)) and Path(text).suffix.lower() not in _FILE_SUFFIXES)


def _torch_file_kind(path: Path, allow_pickle: bool) -> str:
    pkg = read_torch_file(path, 'MusicGen checkpoint', allow_pickle=allow_pickle, mmap=True)
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{path} is not a MusicGen checkpoint (expected an AudioCraft checkpoint.th, an "
                              "exported directory or an extension written by ExtendedMusicGen.save).")
    if isinstance(pkg.get('base_model'), dict) and pkg['base_model'].get('format') == SOLVER_CHECKPOINT_FORMAT:
        return 'solver_checkpoint'
    if 'xp.cfg' not in pkg:
        raise CheckpointError(f"{path} is not a MusicGen checkpoint (no xp.cfg): expected an AudioCraft "
                              "checkpoint.th, an exported directory or an extension written by ExtendedMusicGen.save.")
    if pkg.get('exported'):
        raise CheckpointError(f"{path} is one file of an exported model: pass its directory ({path.parent}), "
                              "which must hold state_dict.bin and compression_state_dict.bin.")
    return 'audiocraft_checkpoint'


def _local(path: Path, allow_pickle: bool) -> BaseSource:
    path = path.expanduser().resolve()
    if path.is_dir():
        if kind_of(path) == 'directory':
            return BaseSource('extension', path, str(path))
        present = [name for name in EXPORTED_FILES if (path / name).is_file()]
        if present:
            if len(present) < len(EXPORTED_FILES):
                missing = sorted(set(EXPORTED_FILES) - set(present))
                raise CheckpointError(f"{path} is not an exported MusicGen directory: missing {', '.join(missing)}. "
                                      "Expected AudioCraft's exported layout (a Hugging Face MusicGen snapshot).")
            return BaseSource('musicgen', path, str(path))
        if (path / 'checkpoint.th').is_file():
            return _local(path / 'checkpoint.th', allow_pickle)
        raise CheckpointError(f"{path} is a directory that holds no model: expected an extension ({CONFIG_NAME}), "
                              "an exported MusicGen (state_dict.bin + compression_state_dict.bin) or a checkpoint.th.")
    if kind_of(path) is not None:
        return BaseSource('extension', path, str(path))
    return BaseSource(_torch_file_kind(path, allow_pickle), path, str(path))


def hub_cache_dir() -> tp.Optional[str]:
    """The cache folder of hub downloads: AUDIOCRAFT_CACHE_DIR as AudioCraft's loaders use it, else the hub's."""
    return os.environ.get('AUDIOCRAFT_CACHE_DIR') or None


def _hub(repo_id: str, revision: tp.Optional[str]) -> BaseSource:
    """A Hugging Face repo: an extension directory if it has its config, else AudioCraft's layout."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    kwargs = {'revision': revision, 'cache_dir': hub_cache_dir()}
    try:
        config = huggingface_hub.hf_hub_download(repo_id, CONFIG_NAME, **kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        config = None
    except Exception as error:
        raise CheckpointError(f"Cannot read the Hugging Face repo {repo_id} ({type(error).__name__}: {error}). "
                              "Check the id and your connection, or use a local path; offline, fill the cache "
                              "first and set HF_HUB_OFFLINE=1.") from None
    if config is not None:
        folder = huggingface_hub.snapshot_download(repo_id, **kwargs)
        return BaseSource('extension', Path(folder), repo_id)
    try:
        files = [huggingface_hub.hf_hub_download(repo_id, name, library_name='audiocraft', **kwargs)
                 for name in EXPORTED_FILES]
    except Exception as error:
        raise CheckpointError(f"The Hugging Face repo {repo_id} holds neither an extension ({CONFIG_NAME}) nor a "
                              f"MusicGen in AudioCraft's layout ({', '.join(EXPORTED_FILES)}), or cannot be read "
                              f"({type(error).__name__}: {error}). Offline, fill the cache first and set "
                              "HF_HUB_OFFLINE=1.") from None
    return BaseSource('musicgen', Path(files[0]).parent, repo_id)


def sig_checkpoint(reference: str, dora_dir: tp.Optional[tp.Union[str, Path]]) -> Path:
    """`//sig/SIG` -> `<dora_dir>/xps/SIG/checkpoint.th`, with errors that say where it looked."""
    sig = reference[len(SIG_PREFIX):].strip('/')
    if dora_dir is None:
        raise CheckpointError(f"{reference}: say which Dora folder the run is in (dora_dir=..., --dora-dir DIR or "
                              "dora.dir=DIR), or pass the run's folder (DIR/xps/SIG) instead.")
    xps = Path(dora_dir).expanduser().resolve() / 'xps'
    path = xps / sig / 'checkpoint.th'
    if not path.exists():
        if (xps / sig).exists():
            raise FileNotFoundError(f"{reference}: {path} does not exist: the run has not saved a checkpoint yet "
                                    "(it saves one at the end of every epoch).")
        raise FileNotFoundError(
            f"{reference}: no run {sig!r} in {xps}. Point to the folder the run used with --dora-dir DIR "
            "(dora.dir=DIR for python -m audiocraft_ext.*, or AUDIOCRAFT_EXT_DORA_DIR=DIR), or pass the "
            "run's own folder (DIR/xps/SIG) instead.")
    return path


def resolve_base(reference: tp.Union[str, Path], dora_dir: tp.Optional[tp.Union[str, Path]] = None,
                 revision: tp.Optional[str] = None, allow_pickle: bool = False) -> BaseSource:
    """Resolve `reference` (see the module docstring) to a `BaseSource`.

    Args:
        reference: the base, as a user writes it.
        dora_dir: the Dora folder `//sig/SIG` refers to.
        revision (str, optional): branch, tag or commit of a Hugging Face repo.
        allow_pickle (bool): accept a checkpoint that only full unpickling can read (trusted files only).
    """
    text = str(reference)
    if text.startswith(PRETRAINED_PREFIX):
        return resolve_base(text[len(PRETRAINED_PREFIX):], dora_dir, revision, allow_pickle)
    if text.startswith(TINY_PREFIX):
        return BaseSource('tiny', text[len(TINY_PREFIX):].strip('/'), text)
    if text.startswith(SIG_PREFIX):
        path = sig_checkpoint(text, dora_dir)
        return BaseSource(_torch_file_kind(path, allow_pickle), path, str(path))
    path = Path(text).expanduser()
    if path.exists():
        return _local(path, allow_pickle)
    if text == 'debug':
        return BaseSource('debug', 'debug', 'debug')
    if is_hub_id(text):
        return _hub(SHORT_NAMES.get(text, text), revision)
    raise FileNotFoundError(f"Base model not found: {text}. Give an existing file or directory, a Hugging Face id "
                            "such as facebook/musicgen-small, or //sig/SIG of a training run.")
