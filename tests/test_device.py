"""`device: auto`: training and evaluation follow the machine (CUDA when available, else the CPU), with
bf16 autocast on a GPU that supports it and float16 (plus a GradScaler) on one that does not; values
the user sets are kept. The CUDA cases run here with torch.cuda's answers patched."""
import logging

import omegaconf
import pytest
import torch

from audiocraft_ext import train
from audiocraft_ext.solvers.device import needs_resolution, resolve_device


@pytest.fixture
def machine(monkeypatch):
    """`machine(cuda, bf16)`: what torch.cuda answers from now on."""
    def patch(cuda: bool, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *args, **kwargs: bf16)
    return patch


def config(**values) -> omegaconf.DictConfig:
    cfg = omegaconf.OmegaConf.create({'device': 'auto', 'autocast': 'auto', 'autocast_dtype': 'auto', **values})
    omegaconf.OmegaConf.set_struct(cfg, True)
    return cfg


def resolved(cfg: omegaconf.DictConfig):
    return cfg.device, cfg.autocast, cfg.autocast_dtype


def test_auto_picks_cuda_with_bf16(machine):
    machine(cuda=True, bf16=True)
    cfg = config()
    assert needs_resolution(cfg)
    message = resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'bfloat16')
    assert not needs_resolution(cfg)
    assert message.startswith('device: cuda (auto: CUDA available), autocast bfloat16')
    # The shipped extended_musicgen config: autocast on, its dtype auto.
    cfg = config(autocast=True)
    resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'bfloat16')


def test_auto_picks_float16_where_the_gpu_has_no_bf16(machine):
    machine(cuda=True, bf16=False)
    cfg = config(autocast=True)
    message = resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'float16')
    assert 'autocast float16' in message and 'GradScaler' in message


def test_auto_picks_the_cpu_without_cuda(machine):
    machine(cuda=False)
    cfg = config()
    assert resolve_device(cfg) == 'device: cpu (auto: no CUDA device), autocast off (auto: off on the CPU)'
    assert resolved(cfg) == ('cpu', False, 'bfloat16')
    # extended_musicgen's autocast=true keeps bf16 autocast on the CPU, as before.
    cfg = config(autocast=True)
    assert resolve_device(cfg) == 'device: cpu (auto: no CUDA device), autocast bfloat16 (auto)'
    assert resolved(cfg) == ('cpu', True, 'bfloat16')


def test_user_values_are_kept(machine):
    machine(cuda=True, bf16=True)
    cfg = config(device='cpu')
    assert resolve_device(cfg).startswith('device: cpu (as configured)')
    assert resolved(cfg) == ('cpu', False, 'bfloat16')
    cfg = config(device='cpu', autocast=True, autocast_dtype='float16')
    resolve_device(cfg)
    assert resolved(cfg) == ('cpu', True, 'float16')
    cfg = config(device='cuda:1', autocast=False)
    assert resolve_device(cfg) == 'device: cuda:1 (as configured), autocast off'
    assert resolved(cfg) == ('cuda:1', False, 'bfloat16')
    machine(cuda=True, bf16=False)
    cfg = config(autocast_dtype='bfloat16')
    resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'bfloat16')
    machine(cuda=False)
    cfg = config(device='cuda', autocast=True, autocast_dtype='auto')
    resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'bfloat16')  # kept; bf16 asked of a GPU only on CUDA


def test_documented_command_follows_the_machine(machine, dora_dir):
    """`--config=solver/extended_musicgen` with no device: auto in the composed config, CUDA on a GPU."""
    xp = train.main.get_xp(train.expand_config_flags(['--config=solver/extended_musicgen',
                                                       'pretrained_model_checkpoint=facebook/musicgen-small']))
    cfg = xp.cfg
    assert (cfg.device, cfg.autocast, cfg.autocast_dtype) == ('auto', True, 'auto')
    machine(cuda=True, bf16=True)
    resolve_device(cfg)
    assert resolved(cfg) == ('cuda', True, 'bfloat16')
    forced = train.main.get_xp(['solver=extended_musicgen', 'device=cpu']).cfg
    resolve_device(forced)
    assert forced.device == 'cpu'


@pytest.mark.slow
def test_tiny_run_with_the_shipped_config_resolves_to_the_cpu(exported_bases, egs, dora_dir, run_xp, caplog):
    """solver=extended_musicgen, device unset, sized like the debug config: a real run on this CPU machine."""
    assert not torch.cuda.is_available()
    tiny = ['extended_model.num_additional_layers=2', 'replay.num_samples=6', 'replay.holdout=2',
            'replay.duration=0.5', 'num_threads=1', 'dataset.batch_size=2', 'dataset.num_workers=0',
            'dataset.segment_duration=1', 'dataset.min_segment_ratio=0.5', 'dataset.sample_on_weight=false',
            'dataset.sample_on_duration=false', 'dataset.train.num_samples=8', 'dataset.valid.num_samples=2',
            'dataset.evaluate.num_samples=2', 'dataset.generate.num_samples=2', 'generate.audio.strategy=peak', 'generate.every=100',
            'evaluate.every=100', 'checkpoint.save_every=1', 'checkpoint.keep_last=0', 'optim.epochs=1',
            'optim.updates_per_epoch=2', 'schedule.lr_scheduler=null']
    argv = ['solver=extended_musicgen', f'pretrained_model_checkpoint={exported_bases["text"]}', f'egs_root={egs}',
            *tiny]
    with caplog.at_level(logging.INFO, logger='audiocraft_ext.solvers'):
        xp, solver = run_xp(argv)
    assert (xp.cfg.device, xp.cfg.autocast, xp.cfg.autocast_dtype) == ('cpu', True, 'bfloat16')
    assert solver.device == 'cpu' and solver.autocast_dtype is torch.bfloat16 and solver.scaler is None
    assert next(solver.model.extension.parameters()).device.type == 'cpu'
    assert 'device: cpu (auto: no CUDA device), autocast bfloat16 (auto)' in caplog.text
    assert len(torch.load(xp.folder / 'checkpoint.th')['history']) == 1

    # The command's own main (logging, distributed backend) resolves it the same way, and says so.
    xp = train.main.get_xp([*argv, 'label=main'])
    train.run_xp(xp)
    trained = torch.load(xp.folder / 'checkpoint.th')['xp.cfg']
    assert (trained['device'], trained['autocast'], trained['autocast_dtype']) == ('cpu', True, 'bfloat16')
    assert 'device: cpu (auto: no CUDA device), autocast bfloat16 (auto)' in (xp.folder / 'solver.log.0').read_text()
