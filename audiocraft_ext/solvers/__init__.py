"""Solvers: AudioCraft training recipes for extended models."""
import typing as tp

import omegaconf

from .extended_musicgen import ExtendedMusicGenSolver

SOLVERS = {'extended_musicgen': ExtendedMusicGenSolver}


def get_solver(cfg: omegaconf.DictConfig) -> tp.Any:
    """Our solvers by `cfg.solver`; any other name is AudioCraft's (`audiocraft.solvers.get_solver`)."""
    if cfg.solver in SOLVERS:
        return SOLVERS[cfg.solver](cfg)
    from audiocraft.solvers import builders
    return builders.get_solver(cfg)
