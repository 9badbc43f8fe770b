"""Hydra SearchPathPlugin: our configs for other Hydra apps, in particular AudioCraft's own
`python -m audiocraft.train`.

Hydra discovers this plugin (namespace package `hydra_plugins`, no `__init__.py` there) in every
Hydra app, and it does the following:

- It appends `audiocraft_ext/configs` to the config search path, after the app's own configs,
  which win on name clashes (our solver configs only rely on groups AudioCraft also has, or on
  names AudioCraft does not use). With AudioCraft installed from a clone (its `config/` tree
  present), `python -m audiocraft.train solver=extended_musicgen ...` then finds our solver configs.
- When the app's primary config directory is AudioCraft's `config/` and it is not installed
  (a pip install, ours), our tree becomes the primary config instead of Hydra's
  `MissingConfigException`, and AudioCraft's environment is pointed at our teams config
  (`AUDIOCRAFT_CONFIG`, AudioCraft's own setting) unless the user set one.
- Inside `python -m audiocraft.train`, the command line is read as `audiocraft_ext.train` reads
  it: `--config=GROUP/NAME` becomes `GROUP=NAME` (Hydra has no `--config` flag), and
  `dora.dir=DIR` sets where experiments live (AudioCraft's `AUDIOCRAFT_DORA_DIR`; stock Dora
  would only record the value in the config).
- It registers `ExtendedMusicGenSolver` under `solver: extended_musicgen` in AudioCraft's solver
  table, a fixed dict in `audiocraft.solvers.builders.get_solver`: the one place where AudioCraft
  offers no hook, so its `get_solver` is wrapped (every other solver name goes to AudioCraft's).
"""
import importlib.util
import os
from pathlib import Path
import sys
import typing as tp

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

_FILE_SCHEME = 'file://'


def package_dir(name: str) -> tp.Optional[Path]:
    """Where the package `name` is installed, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def config_dir() -> Path:
    """`audiocraft_ext/configs`."""
    ours = package_dir('audiocraft_ext')
    assert ours is not None
    return ours / 'configs'


def audiocraft_config_dir() -> tp.Optional[Path]:
    """Where AudioCraft's `train.py` looks for its config tree (`config/` beside the package)."""
    audiocraft = package_dir('audiocraft')
    return None if audiocraft is None else audiocraft.parent / 'config'


def _local_path(search_path: str) -> str:
    path = search_path[len(_FILE_SCHEME):] if search_path.startswith(_FILE_SCHEME) else search_path
    return os.path.realpath(path)


def running_audiocraft_train() -> bool:
    """Whether this process is `python -m audiocraft.train`."""
    spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    return spec is not None and spec.name == 'audiocraft.train'


def read_command_line_as_ours(argv: tp.List[str]) -> None:
    """`--config=GROUP/NAME` -> `GROUP=NAME` in `argv` (in place); `dora.dir=DIR` -> `AUDIOCRAFT_DORA_DIR`."""
    from audiocraft_ext.config_flags import expand_config_flags
    argv[1:] = expand_config_flags(argv[1:])
    for arg in argv[1:]:
        if arg.startswith('dora.dir='):
            os.environ['AUDIOCRAFT_DORA_DIR'] = os.path.abspath(os.path.expanduser(arg[len('dora.dir='):]))


def register_with_audiocraft() -> None:
    """Route `solver: extended_musicgen` to our solver in AudioCraft's own `get_solver`."""
    from audiocraft import solvers
    from audiocraft.solvers import builders
    if getattr(builders.get_solver, '_audiocraft_ext', False):
        return
    original = builders.get_solver

    def get_solver(cfg):
        from audiocraft_ext.solvers import SOLVERS, logger, needs_resolution, resolve_device
        if cfg.solver in SOLVERS:
            return SOLVERS[cfg.solver](cfg)
        if needs_resolution(cfg):  # our root config's `device: auto`, for AudioCraft's own solvers too
            logger.info(resolve_device(cfg))
        return original(cfg)

    get_solver._audiocraft_ext = True  # type: ignore[attr-defined]
    builders.get_solver = get_solver
    solvers.get_solver = get_solver


class AudioCraftExtSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ours = f'{_FILE_SCHEME}{config_dir()}'
        theirs = audiocraft_config_dir()
        elements = search_path.get_path()
        for element in elements:
            if element.provider == 'main' and theirs is not None and not theirs.exists() \
                    and _local_path(element.path) == os.path.realpath(theirs):
                element.path = ours
                os.environ.setdefault('AUDIOCRAFT_CONFIG', str(config_dir() / 'teams' / 'default.yaml'))
        if not any(element.path == ours for element in elements):
            search_path.append(provider='audiocraft-ext', path=ours)
        if running_audiocraft_train():
            read_command_line_as_ours(sys.argv)
        # Only once AudioCraft is imported (inside its own entry point); any other Hydra app only
        # gets the search path entry.
        if 'audiocraft' in sys.modules:
            try:
                register_with_audiocraft()
            except ImportError:
                pass
