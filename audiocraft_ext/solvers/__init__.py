"""Solvers: AudioCraft training recipes for extended models."""
import logging
import typing as tp

import omegaconf

from .device import needs_resolution, resolve_device
from .extended_musicgen import ExtendedMusicGenSolver

logger = logging.getLogger(__name__)

SOLVERS = {'extended_musicgen': ExtendedMusicGenSolver}


def get_solver(cfg: omegaconf.DictConfig) -> tp.Any:
    """Our solvers by `cfg.solver`; any other name is AudioCraft's (`audiocraft.solvers.get_solver`).

    `device: auto` (and `autocast(_dtype): auto`) still in `cfg` are resolved (`solvers.device`) by
    our solvers themselves, and here for AudioCraft's.
    """
    if cfg.solver in SOLVERS:
        return SOLVERS[cfg.solver](cfg)
    if needs_resolution(cfg):
        logger.info(resolve_device(cfg))
    from audiocraft.solvers import builders
    return builders.get_solver(cfg)
