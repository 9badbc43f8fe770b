"""Hydra SearchPathPlugin: our configs for other Hydra apps, e.g. `python -m audiocraft.train`.

With AudioCraft installed from a clone (its `config/` tree present), this makes

    python -m audiocraft.train solver=extended_musicgen pretrained_model_checkpoint=... egs_root=...

work: Hydra discovers this plugin (namespace package `hydra_plugins`, no `__init__.py` there),
which appends `audiocraft_ext/configs` to the config search path (after the app's own configs,
which win on name clashes: our solver configs only rely on groups AudioCraft also has or on
names AudioCraft does not use), and registers `ExtendedMusicGenSolver` under
`solver: extended_musicgen` in AudioCraft's solver table, which is a fixed dict in
`audiocraft.solvers.builders.get_solver`.
"""
import importlib.util
from pathlib import Path
import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def config_dir() -> Path:
    """`audiocraft_ext/configs`, found without importing the package."""
    spec = importlib.util.find_spec('audiocraft_ext')
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]) / 'configs'


def register_with_audiocraft() -> None:
    """Route `solver: extended_musicgen` to our solver in AudioCraft's own `get_solver`."""
    from audiocraft import solvers
    from audiocraft.solvers import builders
    if getattr(builders.get_solver, '_audiocraft_ext', False):
        return
    original = builders.get_solver

    def get_solver(cfg):
        from audiocraft_ext.solvers import SOLVERS
        if cfg.solver in SOLVERS:
            return SOLVERS[cfg.solver](cfg)
        return original(cfg)

    get_solver._audiocraft_ext = True  # type: ignore[attr-defined]
    builders.get_solver = get_solver
    solvers.get_solver = get_solver


class AudioCraftExtSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        path = f'file://{config_dir()}'
        if not any(element.path == path for element in search_path.get_path()):
            search_path.append(provider='audiocraft-ext', path=path)
        # Only inside AudioCraft's own entry point (it has imported audiocraft by then); any
        # other Hydra app only gets the search path entry.
        if 'audiocraft.train' in sys.modules or 'audiocraft' in sys.modules:
            try:
                register_with_audiocraft()
            except ImportError:
                pass
