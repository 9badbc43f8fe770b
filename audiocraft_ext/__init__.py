"""audiocraft-ext: extend a frozen pretrained MusicGen with new trainable transformer layers.

The public classes are imported lazily, so `import audiocraft_ext` stays light (AudioCraft and
torch load on first use).
"""
from pathlib import Path
import typing as tp

__version__ = '0.1.0'
# Our Hydra config tree (shipped in the wheel): the entry points' and the dataset configs' home.
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'

_LAZY = {
    'ExtendedLMModel': 'audiocraft_ext.models.extended_lm',
    'ExtendedMusicGen': 'audiocraft_ext.models.extended_musicgen',
}
__all__ = ['ExtendedLMModel', 'ExtendedMusicGen', '__version__']


def __getattr__(name: str) -> tp.Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audiocraft_ext' has no attribute {name!r}")
