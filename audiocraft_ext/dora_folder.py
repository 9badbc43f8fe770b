"""Where experiments live when a command is not told: `dora.dir` of our config.

`AUDIOCRAFT_EXT_DORA_DIR` if set, else `/tmp/audiocraft_ext_$USER` (configs/config.yaml), read
without composing the Hydra config, for commands that look runs up (`export`, `report`).
"""
from pathlib import Path

from omegaconf import OmegaConf

from . import CONFIG_DIR


def default_dora_dir() -> Path:
    return Path(str(OmegaConf.load(CONFIG_DIR / 'config.yaml').dora.dir)).expanduser()
