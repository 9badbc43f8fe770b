"""Dora/Hydra entry point that trains extended MusicGen models (our `audiocraft.train`).

`audiocraft.train` cannot be imported from a pip install (its `config/` tree is not
installed), so this module is the same entry point over our own config tree
(`audiocraft_ext/configs`, also reachable as `configs/` in the repository):

    python -m audiocraft_ext.train solver=extended_musicgen_debug egs_root=egs/debug
    python -m audiocraft_ext.train --config=solver/extended_musicgen \
        pretrained_model_checkpoint=facebook/musicgen-small egs_root=egs/mydata dora.dir=outputs
    dora -P audiocraft_ext run solver=extended_musicgen ...
    dora -P audiocraft_ext grid extended_musicgen --dry_run --init

`--config=GROUP/NAME` is shorthand for the Hydra override `GROUP=NAME`; `dora.dir=DIR` on the
command line sets where experiments live (also `AUDIOCRAFT_EXT_DORA_DIR`).
"""
import dataclasses
import logging
import multiprocessing
import os
from pathlib import Path
import sys
import typing as tp

from dora import XP, git_save
from dora.hydra import HydraMain
import hydra
import omegaconf

from . import CONFIG_DIR
from .config_flags import expand_config_flags

logger = logging.getLogger(__name__)

# What DataLoader workers import to unpickle AudioCraft's datasets.
_WORKER_MODULES = ('torch', 'audiocraft.data.music_dataset', 'audiocraft.data.info_audio_dataset')


def _use_our_teams_config() -> None:
    """Point AudioCraft's environment at our teams config when its own is not installed."""
    import importlib.util
    spec = importlib.util.find_spec('audiocraft')
    if spec is None or spec.origin is None:
        return
    theirs = Path(spec.origin).parent.parent / 'config' / 'teams'
    if 'AUDIOCRAFT_CONFIG' not in os.environ and not theirs.exists():
        os.environ['AUDIOCRAFT_CONFIG'] = str(CONFIG_DIR / 'teams' / 'default.yaml')


_use_our_teams_config()


class ExtMain(HydraMain):
    """Dora's HydraMain, with `dora.dir=...` overrides honoured for the experiment folder."""
    def get_xp(self, argv: tp.Sequence[str]) -> XP:
        for arg in argv:
            if arg.startswith('dora.dir='):
                self.dora.dir = Path(arg.split('=', 1)[1]).expanduser().resolve()
        return super().get_xp(argv)

    def with_dir(self, dora_dir: tp.Union[str, Path]) -> 'ExtMain':
        """This main with its experiments in `dora_dir`; this one, and its folder, are left as they are."""
        other = object.__new__(type(self))  # not copy.copy: Dora's mains copy (pickle) by name, to themselves
        other.__dict__.update(self.__dict__)
        other.dora = dataclasses.replace(self.dora, dir=Path(dora_dir).expanduser().resolve())
        return other


def resolve_config_dset_paths(cfg: omegaconf.DictConfig) -> None:
    """Manifest paths relative to where the command started (Hydra moves into the XP folder)."""
    for key, value in cfg.datasource.items():
        if isinstance(value, str):
            cfg.datasource[key] = git_save.to_absolute_path(value)


def get_solver(cfg: omegaconf.DictConfig):
    """The solver for `cfg`, with batch sizes divided across distributed workers."""
    import flashy
    from . import solvers
    world_size = flashy.distrib.world_size()
    if cfg.dataset.batch_size % world_size:
        raise ValueError(f"dataset.batch_size={cfg.dataset.batch_size} is not divisible by the "
                         f"{world_size} workers: it is the global batch size.")
    cfg.dataset.batch_size //= world_size
    for split in ['train', 'valid', 'evaluate', 'generate']:
        if hasattr(cfg.dataset, split) and hasattr(cfg.dataset[split], 'batch_size'):
            cfg.dataset[split].batch_size //= world_size
    resolve_config_dset_paths(cfg)
    return solvers.get_solver(cfg)


def get_solver_from_xp(xp: XP, override_cfg: tp.Optional[tp.Union[dict, omegaconf.DictConfig]] = None,
                       restore: bool = True, load_best: bool = True,
                       ignore_state_keys: tp.List[str] = [], disable_fsdp: bool = True):
    """The solver of a Dora XP, e.g. to evaluate or play with it from a notebook.

    Args:
        xp (XP): the experiment.
        override_cfg (dict, optional): nested overrides of `xp.cfg` (not changing the signature).
        restore (bool): restore the last checkpoint.
        load_best (bool): load the best state.
        ignore_state_keys (list of str): state entries not to load, e.g. 'optimizer'.
        disable_fsdp (bool): kept for AudioCraft compatibility (our solver never uses FSDP).
    """
    cfg = xp.cfg
    if override_cfg is not None:
        cfg = omegaconf.OmegaConf.merge(cfg, omegaconf.DictConfig(override_cfg))
    if disable_fsdp and cfg.fsdp.use:
        cfg.fsdp.use = False
    try:
        with xp.enter():
            solver = get_solver(cfg)
            if restore:
                solver.restore(load_best=load_best, ignore_state_keys=ignore_state_keys)
        return solver
    finally:
        hydra.core.global_hydra.GlobalHydra.instance().clear()


def get_solver_from_sig(sig: str, *args, **kwargs):
    """The solver of the experiment with signature `sig` (see `get_solver_from_xp`)."""
    xp = main.get_xp_from_sig(sig)
    return get_solver_from_xp(xp, *args, **kwargs)


def init_seed_and_system(cfg: omegaconf.DictConfig) -> None:
    import random
    import numpy as np
    import torch
    from audiocraft.modules.transformer import set_efficient_attention_backend
    multiprocessing.set_start_method(cfg.mp_start_method, force=True)
    if cfg.mp_start_method == 'forkserver':
        # DataLoader workers fork from one server process: import there, once, what every worker
        # needs to unpickle its dataset, instead of once per worker and per stage (~25 s each on 2 cores).
        multiprocessing.set_forkserver_preload(['__main__', *_WORKER_MODULES])
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    os.environ['MKL_NUM_THREADS'] = str(cfg.num_threads)
    os.environ['OMP_NUM_THREADS'] = str(cfg.num_threads)
    set_efficient_attention_backend(cfg.efficient_attention_backend)
    if 'SLURM_JOB_ID' in os.environ:
        tmpdir = Path('/scratch/slurm_tmpdir/' + os.environ['SLURM_JOB_ID'])
        if tmpdir.exists():
            os.environ['TMPDIR'] = str(tmpdir)


def build_solver(argv: tp.Sequence[str], restore: bool = False) -> tp.Tuple[XP, tp.Any]:
    """The XP and solver that `python -m audiocraft_ext.train *argv` builds, in this process.

    Same Dora main and Hydra composition (`--config=GROUP/NAME` accepted), seeded as `main` seeds
    (`init_seed_and_system`: the new layers' init is reproducible). Logging and distributed setup
    are left to the caller.

    Args:
        argv (list of str): the command's arguments, e.g. `['solver=extended_musicgen_debug', ...]`.
        restore (bool): restore the XP's last checkpoint, if any, into the solver.
    Returns:
        (xp, solver): run the solver inside `with xp.enter():` (see `run_in_process`).
    """
    xp = main.get_xp(expand_config_flags(argv))
    main.init_xp(xp)
    with xp.enter():
        init_seed_and_system(xp.cfg)
        solver = get_solver(xp.cfg)
        if restore:
            solver.restore(replay_metrics=False)
    return xp, solver


def run_in_process(argv: tp.Sequence[str]) -> tp.Tuple[XP, tp.Any]:
    """Train as `python -m audiocraft_ext.train *argv` does, in this process: (xp, solver) after the run."""
    xp, solver = build_solver(argv)
    with xp.enter():
        solver.run()
    return xp, solver


def run_xp(xp: XP) -> None:
    """`main(xp.cfg)` in this process, on an XP the caller composed (`main.get_xp`): what the command does
    once it has its XP (logging, distributed setup, `execute_only`), with Hydra's global state cleared after."""
    main.init_xp(xp)
    try:
        with xp.enter():
            main.main(xp.cfg)
    finally:
        hydra.core.global_hydra.GlobalHydra.instance().clear()


def main(cfg: omegaconf.DictConfig):
    import flashy
    init_seed_and_system(cfg)
    log_name = '%s.log.{rank}' % cfg.execute_only if cfg.execute_only else 'solver.log.{rank}'
    flashy.setup_logging(level=str(cfg.logging.level).upper(), log_name=log_name)
    from .solvers.device import resolve_device
    logger.info(resolve_device(cfg))  # `device: auto`: before the distributed backend and the solver
    # Dora (dora run -d, SLURM) or torchrun-style env vars give the ranks; gloo when on CPU.
    flashy.distrib.init(backend='nccl' if str(cfg.device).startswith('cuda') else 'gloo')
    solver = get_solver(cfg)
    if cfg.show:
        solver.show()
        return
    if cfg.execute_only:
        if not (cfg.execute_inplace or cfg.continue_from is not None):
            raise ValueError("execute_only needs continue_from=<sig or path> (or execute_inplace=true).")
        solver.restore(replay_metrics=False)
        solver.run_one_stage(cfg.execute_only)
        return
    return solver.run()


# DataLoader workers started with spawn or forkserver (`mp_start_method`) re-run the file of
# `python -m audiocraft_ext.train` as `__mp_main__`. A worker needs no Dora main, and Dora cannot
# build one there (it derives the job name from a dotted module name), so only a real import or
# the command itself builds it.
if __name__ != '__mp_main__':
    # Hydra 1.3 semantics: the working directory stays where the command started (relative paths
    # in overrides mean what the user expects); experiment files go to the XP folder anyway.
    main = ExtMain(main, config_name='config', config_path=str(CONFIG_DIR), version_base='1.3')
    main.dora.dir = Path(main.dora.dir).expanduser().resolve()

if __name__ == '__main__':
    sys.argv[1:] = expand_config_flags(sys.argv[1:])
    main()
