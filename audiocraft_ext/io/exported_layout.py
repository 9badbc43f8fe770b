"""AudioCraft's exported layout: what stock `MusicGen.get_pretrained(directory)` loads.

    state_dict.bin              the LM: {'xp.cfg': YAML, 'best_state': state dict, 'version', 'exported'}
    compression_state_dict.bin  the codec: the same keys, or {'pretrained': NAME} for a hub codec

Both are `torch.save`d dicts (AudioCraft reads them with `torch.load`). We write the whole
directory atomically and read the files with `weights_only=True` only.
"""
from pathlib import Path
import typing as tp

import torch

from .atomic import atomic_directory
from .errors import CheckpointError
from .torch_files import read_torch_file

LM_FILE = 'state_dict.bin'
COMPRESSION_FILE = 'compression_state_dict.bin'


def exported_package(cfg_yaml: str, state: tp.Mapping[str, torch.Tensor]) -> tp.Dict[str, tp.Any]:
    """The content of one exported file, as AudioCraft's `export_lm`/`export_encodec` write it."""
    import audiocraft
    return {'xp.cfg': cfg_yaml, 'best_state': dict(state), 'version': audiocraft.__version__, 'exported': True}


def write_exported(directory: tp.Union[str, Path], lm: tp.Mapping[str, tp.Any],
                   compression: tp.Mapping[str, tp.Any]) -> Path:
    """Write both files of the layout into `directory`, as a whole (see `atomic.atomic_directory`)."""
    with atomic_directory(directory) as tmp:
        torch.save(dict(lm), tmp / LM_FILE)
        torch.save(dict(compression), tmp / COMPRESSION_FILE)
    return Path(directory)


def read_exported_file(path: tp.Union[str, Path], allow_pickle: bool = False) -> tp.Dict[str, tp.Any]:
    """One file of the layout, checked: a dict with `xp.cfg` + `best_state`, or `pretrained`."""
    what = 'compression model' if Path(path).name == COMPRESSION_FILE else 'language model'
    pkg = read_torch_file(path, f'exported {what}', allow_pickle=allow_pickle)
    if isinstance(pkg, dict) and isinstance(pkg.get('pretrained'), str):
        return pkg
    if not isinstance(pkg, dict) or 'xp.cfg' not in pkg or not isinstance(pkg.get('best_state'), dict):
        raise CheckpointError(f"{path} is not an exported {what} (expected a dict with 'xp.cfg' and 'best_state', "
                              "as AudioCraft's export functions write).")
    return pkg
