#!/usr/bin/env python3
"""Make the tiny pretrained MusicGen the package ships (audiocraft_ext/pretrained/, read by
`audiocraft_ext.models.shipped`): what `audiocraft-ext demo` extends, as a user extends
`facebook/musicgen-small`. Run once; about 40 minutes on a 2-core CPU (codec 15, base 24).

    python scripts/make_pretrained.py --out audiocraft_ext/pretrained   # what ships (maintainers)
    python scripts/make_pretrained.py --out /tmp/my_base                # rebuild elsewhere, then
    audiocraft-ext demo --pretrained /tmp/my_base

Steps:

1. Data: the score set rendered (`score_dataset.write_score_dataset`, seed 0) at `--clips` clips
   of `--duration` s per domain. Its pieces are dealt to splits by domain alone, so the demo's
   held-out pieces (valid, evaluate, generate) are never among those heard here.
2. Codec: a 16 kHz EnCodec (`configs/solver/demo_compression.yaml`'s model) trained on both
   domains' train clips by `demo.codec_training` (AudioCraft's model and losses, two stages; that
   module says why not `CompressionSolver`), then checked on both domains' evaluate clips:
   `codec_health` (codes used and perplexity per codebook) and the mel distance of its
   reconstructions against an untrained codec's.
3. Base: a MusicGen LM (`configs/solver/demo_musicgen_base.yaml`) trained on the old domain's
   train clips by AudioCraft's own `MusicGenSolver`, through the Dora main of
   `python -m audiocraft_ext.train`, with that codec.
4. Both written as safetensors with the recipe, the measurements and their sha256
   (`shipped.write_pretrained`), the folder replaced as a whole.
"""
import argparse
import json
import os
from pathlib import Path
import platform
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audiocraft.models import builders  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
import torch  # noqa: E402

from audiocraft_ext import CONFIG_DIR  # noqa: E402
from audiocraft_ext.data.score_dataset import write_score_dataset  # noqa: E402
from audiocraft_ext.data.score_domains import DOMAINS, SCORE_SET_VERSION  # noqa: E402
from audiocraft_ext.demo.artefacts import read_clips, split_paths, stack_clips  # noqa: E402
from audiocraft_ext.demo.bases import export_base  # noqa: E402
from audiocraft_ext.demo.codec_training import CodecRecipe, held_out_mel, train_codec  # noqa: E402
from audiocraft_ext.demo.runs import run_logged  # noqa: E402
from audiocraft_ext.io.atomic import atomic_torch_save  # noqa: E402
from audiocraft_ext.io.exported_layout import exported_package, read_exported_file  # noqa: E402
from audiocraft_ext.models.codec_health import check_codec_health  # noqa: E402
from audiocraft_ext.models.bases import build_compression_model  # noqa: E402
from audiocraft_ext.models.shipped import read_part, read_recipe, write_pretrained  # noqa: E402

BASE = {'dim': 128, 'num_heads': 4, 'num_layers': 4, 'updates': 3000, 'lr': 2e-3, 'warmup': 100,
        'batch_size': 16, 'segment': 2.0}


def make_codec(data: Path, held_out: torch.Tensor, updates: int):
    """Step 2: (config YAML, trained codec, what it measured)."""
    codec_cfg = OmegaConf.load(CONFIG_DIR / 'solver' / 'demo_compression.yaml')
    recipe = CodecRecipe(updates=updates)
    start = time.monotonic()
    codec = train_codec(codec_cfg, read_clips(split_paths(data, DOMAINS, 'train')), recipe, evaluate=held_out[::4],
                        log=lambda line: print('codec ' + line, flush=True))
    train_s = time.monotonic() - start
    usage = check_codec_health(codec, held_out, 'trained by scripts/make_pretrained.py')
    torch.manual_seed(0)
    untrained = builders.get_compression_model(codec_cfg)
    untrained.train()
    untrained(held_out[:8])  # its codebooks initialise (k-means) on a first batch
    info = {'recipe': recipe.to_dict(), 'train_s': round(train_s),
            'parameters': sum(p.numel() for p in codec.parameters()), 'held_out_clips': int(held_out.shape[0]),
            'codes_used': [u.used for u in usage], 'perplexity': [round(u.perplexity, 1) for u in usage],
            'mel_distance': round(held_out_mel(codec, held_out), 4),
            'mel_distance_untrained': round(held_out_mel(untrained, held_out), 4)}
    return OmegaConf.to_yaml(codec_cfg), codec, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='folder to write (replaced as a whole)')
    parser.add_argument('--work', help='where the data and the runs go (default: a temporary folder)')
    parser.add_argument('--clips', type=int, default=800, help='clips per domain (default: %(default)s)')
    parser.add_argument('--duration', type=float, default=4.0, help='seconds per clip (default: %(default)s)')
    parser.add_argument('--codec-updates', type=int, default=CodecRecipe.updates)
    parser.add_argument('--codec-from', metavar='DIR', help='reuse the codec of this folder (as this script writes '
                        'it, e.g. audiocraft_ext/pretrained) and train only the base')
    parser.add_argument('--base-updates', type=int, default=BASE['updates'])
    parser.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix='make_pretrained_')).resolve()
    started = time.monotonic()

    data = work / 'data'
    if not (data / 'done').exists():
        for domain in DOMAINS:
            write_score_dataset(data, domain, num_clips=args.clips, duration=args.duration, sample_rate=16000,
                                seed=0, workers=args.threads)
        (data / 'done').write_text('')
    print(f"data: {data} ({time.monotonic() - started:.0f} s)", flush=True)

    held_out = stack_clips(read_clips(split_paths(data, DOMAINS, 'evaluate')))
    if args.codec_from:
        package = read_part('codec', Path(args.codec_from).resolve())
        codec_yaml, codec = package['xp.cfg'], build_compression_model(package, 'cpu')
        codec_info = {**read_recipe(Path(args.codec_from).resolve())['codec'], 'reused_from': str(args.codec_from)}
        codec_info.pop('sha256', None)
        codec_info.pop('config', None)
    else:
        codec_yaml, codec, codec_info = make_codec(data, held_out, args.codec_updates)
    print('codec', json.dumps(codec_info), flush=True)
    codec_file = work / 'codec' / 'compression_state_dict.bin'
    atomic_torch_save(exported_package(codec_yaml, codec.state_dict()), codec_file)

    argv = ['solver=demo_musicgen_base', f'egs_root={data / "egs" / "old"}', f'dora.dir={work / "dora"}',
            f'compression_model_checkpoint=//pretrained/{codec_file}', 'device=cpu', 'autocast=false',
            f'num_threads={args.threads}', 'seed=0', f'dataset.batch_size={BASE["batch_size"]}',
            'dataset.num_workers=0', f'transformer_lm.dim={BASE["dim"]}',
            f'transformer_lm.num_heads={BASE["num_heads"]}', f'transformer_lm.num_layers={BASE["num_layers"]}',
            f'dataset.segment_duration={BASE["segment"]}', 'optim.epochs=20',
            f'optim.updates_per_epoch={args.base_updates // 20}',  # an epoch ends with its loader, too:
            f'dataset.train.num_samples={args.base_updates // 20 * BASE["batch_size"]}', f'optim.lr={BASE["lr"]}',
            'schedule.lr_scheduler=cosine', f'schedule.cosine.warmup={BASE["warmup"]}',
            'dataset.valid.num_samples=64', f'generate.lm.gen_duration={BASE["segment"] / 2:g}']
    base_start = time.monotonic()
    xp = run_logged(argv, work / 'base_train.log')
    exported = export_base(xp / 'checkpoint.th', codec_file, work / 'base_exported')
    history = json.loads((xp / 'history.json').read_text())
    base_info = {'recipe': {**BASE, 'updates': args.base_updates, 'solver': 'MusicGenSolver', 'argv': argv[3:]},
                 'train_s': round(time.monotonic() - base_start),
                 'valid_ce_by_epoch': [round(epoch['valid']['ce'], 4) for epoch in history if 'valid' in epoch],
                 'train_pieces': json.loads((data / 'egs' / 'old' / 'synth.json').read_text())['pieces']['train']}
    lm = read_exported_file(exported / 'state_dict.bin')
    base_info['parameters'] = sum(t.numel() for t in lm['best_state'].values())
    print('base', json.dumps({k: v for k, v in base_info.items() if k != 'train_pieces'}), flush=True)

    import audiocraft
    recipe_json = {'made_by': 'scripts/make_pretrained.py', 'score_set_version': SCORE_SET_VERSION,
                   'data': {'clips_per_domain': args.clips, 'duration': args.duration, 'seed': 0},
                   'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                               'threads': args.threads, 'torch': torch.__version__,
                               'audiocraft': audiocraft.__version__},
                   'total_s': round(time.monotonic() - started),
                   'codec': codec_info, 'base_lm': base_info}
    out = write_pretrained(Path(args.out).resolve(), {'codec': (codec_yaml, codec.state_dict()),
                                                       'base_lm': (lm['xp.cfg'], lm['best_state'])}, recipe_json)
    print(f"wrote {out} in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
