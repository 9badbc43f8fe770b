"""The tiny pretrained MusicGen shipped inside the package: what `audiocraft-ext demo` extends, as a
user extends `facebook/musicgen-small`.

    audiocraft_ext/pretrained/codec.safetensors    a 16 kHz EnCodec (4 codebooks of 256, 50 frames/s)
    audiocraft_ext/pretrained/base_lm.safetensors  a MusicGen LM trained on the score set's old domain
    audiocraft_ext/pretrained/recipe.json          how both were made, what they measured, sha256 of each

Each `.safetensors` file holds a state dict and, in its metadata header, the AudioCraft config
(`xp.cfg`, YAML) that `audiocraft.models.builders` builds the model from. scripts/make_pretrained.py
writes all three; nothing here unpickles anything.
"""
import json
from pathlib import Path
import typing as tp

import safetensors
import safetensors.torch
import torch

from ..io.atomic import atomic_directory
from ..io.errors import CheckpointError
from ..io.exported_layout import exported_package, write_exported
from ..io.hashing import file_sha256

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / 'pretrained'
RECIPE_FILE = 'recipe.json'
FILES = {'codec': 'codec.safetensors', 'base_lm': 'base_lm.safetensors'}
CONFIG_KEY = 'xp.cfg'


def read_recipe(folder: Path = PRETRAINED_DIR) -> tp.Dict[str, tp.Any]:
    """recipe.json of `folder`: {'codec': {...}, 'base_lm': {...}, each with 'sha256' and 'config'}."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the shipped base is missing from this installation "
                                "(write it with scripts/make_pretrained.py).")
    return json.loads(path.read_text(encoding='utf-8'))


def read_part(part: str, folder: Path = PRETRAINED_DIR) -> tp.Dict[str, tp.Any]:
    """The part ('codec' or 'base_lm') as an exported package {'xp.cfg', 'best_state', ...}, after
    checking the file against the sha256 its recipe records."""
    path = folder / FILES[part]
    expected = read_recipe(folder)[part]['sha256']
    if not path.is_file() or file_sha256(path) != expected:
        raise CheckpointError(f"{path} is missing or does not match the sha256 in {folder / RECIPE_FILE}: the "
                              "installation is damaged; reinstall the package or rebuild the base with "
                              "scripts/make_pretrained.py.")
    with safetensors.safe_open(str(path), framework='pt') as file:
        cfg_yaml = (file.metadata() or {}).get(CONFIG_KEY)
        state = {name: file.get_tensor(name) for name in file.keys()}
    if not cfg_yaml:
        raise CheckpointError(f"{path} has no '{CONFIG_KEY}' in its metadata.")
    return exported_package(cfg_yaml, state)


def write_pretrained(folder: tp.Union[str, Path], parts: tp.Mapping[str, tp.Tuple[str, tp.Mapping[str, torch.Tensor]]],
                     recipe: tp.Mapping[str, tp.Any]) -> Path:
    """Write both parts {part: (config YAML, state dict)} and their recipe into `folder`, as a whole
    (`atomic_directory`); each part's entry of `recipe` gains its file's sha256 and config."""
    recipe = {name: dict(entry) if isinstance(entry, dict) else entry for name, entry in recipe.items()}
    with atomic_directory(folder) as tmp:
        for part, (cfg_yaml, state) in parts.items():
            tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
            safetensors.torch.save_file(tensors, str(tmp / FILES[part]), metadata={CONFIG_KEY: cfg_yaml})
            recipe.setdefault(part, {}).update(sha256=file_sha256(tmp / FILES[part]), config=cfg_yaml)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + '\n', encoding='utf-8')
    return Path(folder)


def export_pretrained(directory: tp.Union[str, Path], folder: Path = PRETRAINED_DIR) -> Path:
    """The shipped base in AudioCraft's exported layout (what stock `MusicGen.get_pretrained(directory)`
    and `pretrained_model_checkpoint=directory` load), written atomically into `directory`."""
    return write_exported(directory, read_part('base_lm', folder), read_part('codec', folder))
