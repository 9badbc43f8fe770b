"""Solver checkpoints of `ExtendedMusicGenSolver`: what they hold, how to read them, how bases resolve.

A solver checkpoint (`<dora.dir>/xps/<sig>/checkpoint.th`) holds only what training changes:

    {'model': extension state dict, 'best_state': {'model': ...}, 'optimizer': ..., 'ema': ...,
     'lr_scheduler': ..., 'history': [...], 'xp.cfg': plain dict, 'xp.sig': str,
     'base_model': {'format', 'reference', 'hash', 'extension_config'}}

`base_model.reference` says where the frozen base comes from (absolute path, Hugging Face id,
`//sig/SIG` or `//tiny/FLAVOUR`) and `base_model.hash` is its `weights_hash`, checked whenever the
extension is put back on a base.

About `torch.load`: torch >= 2.6 loads with `weights_only=True` by default. Stock AudioCraft
checkpoints pickle OmegaConf objects (`xp.cfg`) and a `collections.defaultdict` (EMA state), which
that unpickler refuses. Our solver therefore writes checkpoints made only of tensors and plain
Python containers (`plain_state`), which load under the default `weights_only=True`; and
`omegaconf_safe_globals()` allow-lists the OmegaConf classes (data containers, no code) so that
checkpoints written by stock AudioCraft solvers (e.g. `continue_from=`) load with
`weights_only=True` as well, instead of falling back to full unpickling.
"""
import collections
from contextlib import contextmanager
from pathlib import Path
import typing as tp

from omegaconf import DictConfig, ListConfig, OmegaConf
import torch

SOLVER_CHECKPOINT_FORMAT = 'audiocraft_ext.solver_checkpoint'
SIG_PREFIX = '//sig/'
TINY_PREFIX = '//tiny/'


def omegaconf_safe_globals() -> tp.List[tp.Any]:
    """Classes that an OmegaConf config (and AudioCraft's EMA state) pickle refers to."""
    import typing
    from omegaconf import base, nodes
    node_classes = [getattr(nodes, name) for name in dir(nodes)
                    if isinstance(getattr(nodes, name), type) and issubclass(getattr(nodes, name), nodes.Node)]
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, typing.Any, dict, list, int,
            float, str, bool, collections.defaultdict, collections.OrderedDict, *node_classes]


@contextmanager
def allow_omegaconf_in_torch_load():
    """`torch.load(weights_only=True)` inside this block also accepts pickled OmegaConf configs."""
    with torch.serialization.safe_globals(omegaconf_safe_globals()):
        yield


def plain_state(state: tp.Any) -> tp.Any:
    """`state` with OmegaConf containers and defaultdicts turned into plain dicts and lists."""
    if isinstance(state, (DictConfig, ListConfig)):
        return OmegaConf.to_container(state, resolve=False)
    if isinstance(state, dict):
        return {key: plain_state(value) for key, value in state.items()}
    if isinstance(state, list):
        return [plain_state(value) for value in state]
    if isinstance(state, tuple):
        return tuple(plain_state(value) for value in state)
    return state


def dora_dir() -> Path:
    """The default Dora folder: the running XP's, else our entry point's (`dora.dir` of the config)."""
    import dora
    if dora.is_xp():
        return Path(dora.get_xp().dora.dir)
    from .. import train
    return Path(train.main.dora.dir)


class RunNotFoundError(FileNotFoundError):
    """`//sig/SIG` names no experiment (or one without a checkpoint) in the Dora folder searched."""


def resolve_sig(reference: str, name: tp.Optional[str] = None,
                folder: tp.Optional[tp.Union[str, Path]] = None) -> Path:
    """`//sig/SIG` -> `<dora dir>/xps/SIG/checkpoint.th` (or `checkpoint_<name>.th`).

    Args:
        reference (str): `//sig/SIG`.
        name (str, optional): checkpoint name suffix.
        folder (str or Path, optional): the Dora folder (`dora.dir`); default `dora_dir()`.
    """
    sig = reference[len(SIG_PREFIX):].strip('/')
    xps = Path(folder if folder is not None else dora_dir()).expanduser().resolve() / 'xps'
    path = xps / sig / (f'checkpoint_{name}.th' if name else 'checkpoint.th')
    if not path.exists():
        if (xps / sig).exists():
            raise RunNotFoundError(f"{reference}: {path} does not exist: the run has not saved a checkpoint yet "
                                   "(it saves one at the end of every epoch).")
        raise RunNotFoundError(
            f"{reference}: no run {sig!r} in {xps}. Point to the folder the run used with --dora-dir DIR "
            "(dora.dir=DIR for python -m audiocraft_ext.*, or AUDIOCRAFT_EXT_DORA_DIR=DIR), or pass the "
            "run's own folder (DIR/xps/SIG) instead.")
    return path


def resolve_checkpoint_path(sig_or_path: tp.Union[str, Path], name: tp.Optional[str] = None,
                            use_fsdp: bool = False) -> tp.Optional[Path]:
    """Same contract as `audiocraft.utils.checkpoint.resolve_checkpoint_path`, for our Dora folder.

    AudioCraft's version imports `audiocraft.train`, which fails on a pip install of AudioCraft
    (its `config/` tree is not installed), so the solver uses this one while loading.
    """
    from audiocraft.environment import AudioCraftEnvironment
    from audiocraft.utils.checkpoint import checkpoint_name
    sig_or_path = str(sig_or_path)
    if sig_or_path.startswith(SIG_PREFIX):
        path = dora_dir() / 'xps' / sig_or_path[len(SIG_PREFIX):]
    else:
        path = AudioCraftEnvironment.resolve_reference_path(Path(sig_or_path))
    if path.is_dir():
        path = path / checkpoint_name(name, use_fsdp=use_fsdp)
    return path if path.exists() else None


def read_solver_checkpoint(path: tp.Union[str, Path]) -> tp.Optional[dict]:
    """The content of an `ExtendedMusicGenSolver` checkpoint, or None for any other file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with allow_omegaconf_in_torch_load():
            pkg = torch.load(path, map_location='cpu', mmap=True)  # cheap peek, also for big files
    except Exception:
        return None
    if isinstance(pkg, dict) and isinstance(pkg.get('base_model'), dict) \
            and pkg['base_model'].get('format') == SOLVER_CHECKPOINT_FORMAT:
        return pkg
    return None


def tiny_base(reference: str):
    """`//tiny/FLAVOUR[/SEED]`: a deterministic tiny random MusicGen, for debug configs and tests."""
    from ..models.tiny import build_tiny_musicgen
    parts = reference[len(TINY_PREFIX):].strip('/').split('/')
    flavour = parts[0] or 'text'
    seed = int(parts[1]) if len(parts) > 1 else 0
    return build_tiny_musicgen(flavour, seed=seed)


def load_base(reference: str, device: tp.Optional[str] = None, folder: tp.Optional[tp.Union[str, Path]] = None):
    """The frozen base named by `pretrained_model_checkpoint`, as a plain `MusicGen`.

    Beyond what `models.checkpoints.load_base_musicgen` accepts (Hugging Face id, exported
    directory, AudioCraft `checkpoint.th`, `ExtendedMusicGen.save` file), this resolves
    `//sig/SIG` (in the Dora folder `folder`, default `dora_dir()`) and checkpoints of our own
    solver (their best extension is merged into a plain L + N layer MusicGen to keep extending),
    and `//tiny/FLAVOUR[/SEED]` (debug only).
    """
    from ..models.checkpoints import load_base_musicgen
    if reference.startswith(TINY_PREFIX):
        return tiny_base(reference)
    path = resolve_sig(reference, folder=folder) if reference.startswith(SIG_PREFIX) else Path(reference)
    if read_solver_checkpoint(path) is not None:
        return extended_from_solver_checkpoint(path, device=device, folder=folder).merged_musicgen()
    return load_base_musicgen(str(path) if path.exists() else reference, device=device)


def extended_from_solver_checkpoint(path: tp.Union[str, Path], state: str = 'best',
                                    device: tp.Optional[str] = None, folder: tp.Optional[tp.Union[str, Path]] = None):
    """An `ExtendedMusicGen` from a solver checkpoint (file, xp folder or `//sig/SIG`).

    Args:
        path: the checkpoint.
        state (str): 'best' (the best validation state, with EMA when EMA is used) or 'last'
            (the weights at the end of the last epoch).
        device (str, optional): where to load; default cuda if available.
        folder (str or Path, optional): the Dora folder `//sig/SIG` refers to; default `dora_dir()`.
    """
    from ..models.checkpoints import CheckpointError
    from ..models.extended_musicgen import ExtendedMusicGen
    reference = str(path)
    if reference.startswith(SIG_PREFIX):
        path = resolve_sig(reference, folder=folder)
    path = Path(path)
    if path.is_dir():
        path = path / 'checkpoint.th'
    if not path.exists():
        raise RunNotFoundError(f"{reference}: {path} does not exist. Give a run's folder (DORA_DIR/xps/SIG), its "
                               "checkpoint.th, or //sig/SIG with the Dora folder it was trained in.")
    pkg = read_solver_checkpoint(path)
    if pkg is None:
        raise CheckpointError(f"{path} is not a checkpoint of ExtendedMusicGenSolver.")
    if state not in ('best', 'last'):
        raise ValueError(f"state must be 'best' or 'last', got {state!r}.")
    extension_state = pkg['best_state']['model'] if state == 'best' else pkg['model']
    info = pkg['base_model']
    base = load_base(info['reference'], device=device, folder=folder)
    reference = None if info['reference'].startswith(TINY_PREFIX) else info['reference']
    return ExtendedMusicGen.from_extension(base, info['extension_config'], extension_state, info['hash'],
                                           base_reference=reference, source=str(path),
                                           base_description=info['reference'])
