"""What the demo's extension run starts from: a tiny EnCodec and a tiny MusicGen base, trained by AudioCraft's
own solvers (`CompressionSolver`, `MusicGenSolver`) in this process, exported, cached."""
import argparse
import json
from pathlib import Path
import shutil
import time
import typing as tp

from audiocraft.models import builders
from audiocraft.utils.export import export_encodec
import numpy as np
from omegaconf import OmegaConf
import soundfile
import torch

from .. import CONFIG_DIR
from ..io.atomic import atomic_torch_save
from ..io.exported_layout import exported_package, read_exported_file, write_exported
from ..io.torch_files import allow_omegaconf_in_torch_load, read_torch_file
from ..models.bases import build_compression_model
from ..models.codec_health import check_codec_health, refit_codebooks
from .arguments import Sizes
from .artefacts import DEMO_VERSION, config_text, key, mark_done, reuse_or_clear
from .progress import Steps
from .runs import common_overrides, run_logged


def make_codec(cache: Path, data: Path, sizes: Sizes, args: argparse.Namespace, steps: Steps) -> tp.Tuple[Path, dict]:
    """Exported tiny EnCodec (`compression_state_dict.bin`), trained or random; cached."""
    params = {'version': DEMO_VERSION, 'data': data.name, 'kind': args.codec, 'seed': args.seed,
              'epochs': sizes.codec_epochs, 'updates': sizes.codec_updates,
              'config': config_text('demo_compression')}
    folder = cache / f'codec-{key(params)}'
    exported = folder / 'compression_state_dict.bin'
    cached = reuse_or_clear(folder, exported, args, steps)
    if cached:
        return exported, cached
    start = time.monotonic()
    if args.codec == 'random':
        cfg = OmegaConf.load(CONFIG_DIR / 'solver' / 'demo_compression.yaml')
        torch.manual_seed(args.seed)
        model = builders.get_compression_model(cfg)
        refit_codebooks(model, clips(data, 'train'))  # its codebooks start empty (k-means init)
        atomic_torch_save(exported_package(OmegaConf.to_yaml(cfg), model.state_dict()), exported)
    else:
        argv = ['solver=demo_compression', f'egs_root={data / "egs" / "all"}', f'dora.dir={folder / "dora"}',
                *common_overrides(args, sizes), f'optim.epochs={sizes.codec_epochs}',
                f'optim.updates_per_epoch={sizes.codec_updates}']
        xp = run_logged(argv, folder / 'train.log')
        with allow_omegaconf_in_torch_load():
            export_encodec(xp / 'checkpoint.th', exported)
        refit_exported_codec(exported, clips(data, 'train'))
    usage = check_codec_health(build_compression_model(read_exported_file(exported), 'cpu'),
                               clips(data, 'evaluate'), f"{exported} ({args.codec})")
    info = {**params, 'train_s': time.monotonic() - start,
            'codes_used': [u.used for u in usage], 'perplexity': [round(u.perplexity, 1) for u in usage]}
    info.pop('config')
    mark_done(folder, info)
    return exported, {**info, 'cached': False}


def clips(data: Path, split: str) -> torch.Tensor:
    """Every clip of both domains' `split` as [B, 1, T] (cut to the shortest)."""
    lines = (data / 'egs' / 'all' / split / 'data.jsonl').read_text().splitlines()
    wavs = [soundfile.read(json.loads(line)['path'], dtype='float32')[0] for line in lines if line.strip()]
    length = min(len(w) for w in wavs)
    return torch.from_numpy(np.stack([w[:length] for w in wavs]))[:, None]


def refit_exported_codec(exported: Path, wav: torch.Tensor) -> None:
    """Refit the exported EnCodec's codebooks by k-means on `wav` [B, 1, T] (`codec_health`), in place."""
    pkg = read_exported_file(exported)
    model = build_compression_model(pkg, 'cpu')
    refit_codebooks(model, wav)
    atomic_torch_save(exported_package(pkg['xp.cfg'], model.state_dict()), exported)


def make_base(cache: Path, data: Path, codec: Path, sizes: Sizes, args: argparse.Namespace,
              steps: Steps) -> tp.Tuple[Path, dict]:
    """The tiny MusicGen trained on the old domain by MusicGenSolver, exported; cached."""
    params = {'version': DEMO_VERSION, 'data': data.name, 'codec': codec.parent.name, 'seed': args.seed,
              'dim': sizes.base_dim, 'layers': sizes.base_layers, 'epochs': sizes.base_epochs,
              'updates': sizes.base_updates, 'lr': sizes.base_lr, 'segment': sizes.segment,
              'batch_size': sizes.batch_size, 'config': config_text('demo_musicgen_base')}
    folder = cache / f'base-{key(params)}'
    exported = folder / 'exported'
    cached = reuse_or_clear(folder, exported, args, steps)
    if cached:
        return exported, cached
    start = time.monotonic()
    argv = ['solver=demo_musicgen_base', f'egs_root={data / "egs" / "old"}', f'dora.dir={folder / "dora"}',
            f'compression_model_checkpoint=//pretrained/{codec}', *common_overrides(args, sizes),
            f'transformer_lm.dim={sizes.base_dim}', f'transformer_lm.num_layers={sizes.base_layers}',
            f'dataset.segment_duration={sizes.segment}', f'optim.epochs={sizes.base_epochs}',
            f'optim.updates_per_epoch={sizes.base_updates}', f'optim.lr={sizes.base_lr}',
            f'generate.lm.gen_duration={sizes.segment / 2:g}']
    xp = run_logged(argv, folder / 'train.log')
    export_base(xp / 'checkpoint.th', codec, exported)
    shutil.copy(xp / 'history.json', folder / 'history.json')
    info = {**params, 'train_s': time.monotonic() - start}
    info.pop('config')
    mark_done(folder, info)
    return exported, {**info, 'cached': False}


def export_base(checkpoint: Path, codec: Path, exported: Path, max_duration: float = 30.0) -> Path:
    """MusicGenSolver's best state and the codec in AudioCraft's exported layout, as `export_lm` and
    `export_pretrained_compression_model` write them, with `dataset.segment_duration` at least 30 s.

    `MusicGen.__init__` takes its maximum generation window from that key and immediately sets
    `extend_stride=18`, which it asserts is shorter: stock `MusicGen.get_pretrained` cannot load
    an LM exported from 2 s segments. The window is only a limit for generation (the sinusoidal
    positions have no maximum); the demo generates clips no longer than the training segments.
    """
    pkg = read_torch_file(checkpoint, 'MusicGenSolver checkpoint')
    cfg = OmegaConf.create(OmegaConf.to_yaml(pkg['xp.cfg']))
    cfg.dataset.segment_duration = max(float(cfg.dataset.segment_duration), max_duration)
    lm = exported_package(OmegaConf.to_yaml(cfg), pkg['best_state']['model'])  # the demo trains without FSDP
    return write_exported(exported, lm, read_exported_file(codec))
