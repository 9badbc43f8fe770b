"""Checkpoints of `ExtendedMusicGenSolver` (`<dora.dir>/xps/<sig>/checkpoint.th`): what they hold.

    {'model': extension state dict, 'best_state': {'model': ...}, 'optimizer': ..., 'ema': ...,
     'lr_scheduler': ..., 'history': [...], 'xp.cfg': plain dict, 'xp.sig': str,
     'base_model': {'format', 'reference', 'hash', 'extension_config'}}

Only what training changes: `base_model.reference` says where the frozen base comes from (an
absolute path, a Hugging Face id or `//tiny/FLAVOUR`) and `base_model.hash` is its `weights_hash`,
checked whenever the extension is put back on a base. The solver writes them with tensors and
plain containers only (`plain_state`), so they load with `torch.load(weights_only=True)`.
"""
from pathlib import Path
import typing as tp

from omegaconf import DictConfig, ListConfig, OmegaConf

from .base_reference import SOLVER_CHECKPOINT_FORMAT
from .errors import CheckpointError
from .torch_files import read_torch_file


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


def is_solver_checkpoint(pkg: tp.Any) -> bool:
    return isinstance(pkg, dict) and isinstance(pkg.get('base_model'), dict) \
        and pkg['base_model'].get('format') == SOLVER_CHECKPOINT_FORMAT


def read_solver_checkpoint(path: tp.Union[str, Path], mmap: bool = True) -> tp.Dict[str, tp.Any]:
    """The content of a checkpoint of `ExtendedMusicGenSolver` (a file or an XP folder), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / 'checkpoint.th'
    pkg = read_torch_file(path, 'training checkpoint', mmap=mmap)
    if not is_solver_checkpoint(pkg):
        raise CheckpointError(f"{path} is not a checkpoint of ExtendedMusicGenSolver (no base_model entry).")
    return pkg
