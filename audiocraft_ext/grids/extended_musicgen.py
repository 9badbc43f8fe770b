"""Grid: number of new layers x learning rate, on a pretrained MusicGen.

    dora -P audiocraft_ext grid extended_musicgen --dry_run --init   # list (and create) the XPs
    dora -P audiocraft_ext grid extended_musicgen                    # launch them on SLURM

Set the base and the data in the environment or edit BASE / EGS below.
"""
import os

from dora import Explorer, Launcher
import treetable as tt

BASE = os.environ.get('AUDIOCRAFT_EXT_BASE', 'facebook/musicgen-small')
EGS = os.environ.get('AUDIOCRAFT_EXT_EGS', 'egs/data')


class ExtendedExplorer(Explorer):
    """Shows the epoch and the last train / valid cross entropy of each XP."""
    def get_grid_metrics(self):
        return [tt.group('train', [tt.leaf('ce', '.3f')], align='>'),
                tt.group('valid', [tt.leaf('ce', '.3f')], align='>')]

    def process_history(self, history):
        last = history[-1] if history else {}
        return {'epoch': len(history), 'train': {'ce': last.get('train', {}).get('ce')},
                'valid': {'ce': last.get('valid', {}).get('ce')}}


@ExtendedExplorer
def explorer(launcher: Launcher):
    launcher.slurm_(gpus=1, partition=os.environ.get('AUDIOCRAFT_EXT_PARTITION', 'learnlab'))
    launcher.bind_({'solver': 'extended_musicgen', 'pretrained_model_checkpoint': BASE,
                    'egs_root': EGS, 'device': 'cuda', 'autocast': True})
    for layers in [4, 12]:
        for lr in [1e-4, 3e-4]:
            launcher({'extended_model.num_additional_layers': layers, 'optim.lr': lr})
