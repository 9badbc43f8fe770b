"""Deliberate breakages for `scripts/mutation_check.py`: with this folder on PYTHONPATH and
AUDIOCRAFT_EXT_MUTANT set, every Python process of the run (the test's and the training commands
it starts) breaks one thing before it does any work. The suite must turn red for each:

    constant_encoder   the compression model's encoder outputs a constant (a collapsed tokenizer)
    zero_lr            the new layers' optimizer groups have learning rate 0 (nothing is learnt)
    no_kl              the forgetting control's KL term has weight 0 (distillation off)
"""
import os

MUTANT = os.environ.get('AUDIOCRAFT_EXT_MUTANT')


def _constant_encoder() -> None:
    from audiocraft.modules.seanet import SEANetEncoder
    import torch
    forward = SEANetEncoder.forward
    SEANetEncoder.forward = lambda self, x: torch.ones_like(forward(self, x))


def _zero_lr() -> None:
    from audiocraft_ext.solvers.extended_musicgen import ExtendedMusicGenSolver
    groups = ExtendedMusicGenSolver.trainable_parameter_groups
    ExtendedMusicGenSolver.trainable_parameter_groups = lambda self: [
        {**group, 'lr': 0.0} for group in groups(self)]


def _no_kl() -> None:
    from dataclasses import replace
    from audiocraft_ext.solvers.forgetting import ForgettingControl
    init = ForgettingControl.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.config = replace(self.config, ce_weight=max(self.config.ce_weight, 1e-9), distill_weight=0.0)
    ForgettingControl.__init__ = __init__


MUTANTS = {'constant_encoder': _constant_encoder, 'zero_lr': _zero_lr, 'no_kl': _no_kl}
if MUTANT:
    MUTANTS[MUTANT]()
