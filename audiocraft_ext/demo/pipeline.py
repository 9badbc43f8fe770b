"""`audiocraft-ext demo`: the whole mission, offline, on a CPU, in a few minutes.

Steps (each printed as `[x/N] name`):

1. **Data**: the synthetic two-domain captioned dataset (`audiocraft_ext.data.synth_dataset`): an
   ``old`` domain (slow major-key pads, organ, flute) and a ``new`` one (fast minor-key plucks,
   square leads, bells, drums), in AudioCraft's layout.
2. **Compression model**: a tiny 16 kHz EnCodec trained briefly on both domains' audio with
   AudioCraft's own `CompressionSolver` (reconstruction losses, no discriminators), exported
   with `audiocraft.utils.export.export_encodec`. `--codec random` uses an untrained one.
3. **Base**: a tiny MusicGen trained from scratch on the old domain with AudioCraft's own
   `MusicGenSolver`, exported with `audiocraft.utils.export.export_lm` into the layout stock
   `MusicGen.get_pretrained(dir)` loads. Steps 2 and 3 run in this process through the same
   Dora main as `python -m audiocraft_ext.train` (one AudioCraft import less), and are cached
   under `--cache-dir`, keyed on every parameter that changes them.
4. **Mission**: `python -m audiocraft_ext.train --config=solver/extended_musicgen
   pretrained_model_checkpoint=<base> egs_root=<new domain> ...` in a subprocess: the command
   users run, printed in full.
5. **Generate**: the run is exported (`audiocraft-ext export`'s code) to one file, loaded with
   `ExtendedMusicGen.get_pretrained` and asked for clips from new- and old-domain captions, at
   `extension_scale` 1.0 (extended) and 0.0 (exactly the base).
6. **Evaluate**: `python -m audiocraft_ext.evaluate` on the run (cross entropy of base and
   extended on the new domain and on the old one, extension_scale sweep and its plot).
7. **Summary**: loss curves from the runs' `history.json`, `summary.json`, the listening report
   `OUT/report/report.html` (base, extended and dataset clip per caption, metrics, plots), and
   the summary.

`--base PATH_OR_ID` skips steps 2-3 and extends a real pretrained MusicGen instead.
"""
import argparse
from dataclasses import asdict, dataclass
import hashlib
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time
import typing as tp

from ..data.splits import SPLITS
from ..data.synth_dataset import write_dataset
from ..data.synth_domains import DOMAINS, SYNTH_VERSION
from ..evaluation.plots import plot_loss_curves
from ..io.atomic import atomic_write_text
from .progress import CondensedLog, Steps, condensed_stderr, format_seconds
from .report_page import write_demo_report

STEPS = ('Synthetic data', 'Compression model', 'Base MusicGen on the old domain',
         'Extend and train on the new domain', 'Export and generate', 'Evaluate', 'Summary')
DEMO_VERSION = 1


@dataclass
class Sizes:
    """Everything that sets how big and how long the demo is."""
    clips: int = 60             # per domain, over all splits (70% train)
    duration: float = 3.0       # seconds per clip
    segment: float = 2.0        # seconds per training example (LM); generated clips are as long
    codec_epochs: int = 4
    codec_updates: int = 25
    base_dim: int = 64
    base_layers: int = 4
    base_epochs: int = 6
    base_updates: int = 20
    base_lr: float = 3e-3
    new_layers: int = 2
    mission_epochs: int = 6
    mission_updates: int = 15
    mission_lr: float = 2e-3
    batch_size: int = 8
    prompts: int = 3            # per domain


QUICK = Sizes(clips=20, duration=2.0, segment=1.0, codec_epochs=1, codec_updates=8, base_dim=32,
              base_layers=2, base_epochs=2, base_updates=8, new_layers=1, mission_epochs=2,
              mission_updates=10, mission_lr=5e-3, prompts=2)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = Sizes()
    parser.add_argument('--out', default='./demo_out', help='output directory (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of every run (default: %(default)s)')
    parser.add_argument('--quick', action='store_true',
                        help='smallest sizes that still show the effect (the test suite runs this)')
    parser.add_argument('--base', metavar='PATH_OR_ID',
                        help='extend this pretrained MusicGen (Hugging Face id, exported directory, '
                             'checkpoint.th) instead of training the tiny embedded base')
    parser.add_argument('--codec', choices=['train', 'random'],
                        help='train the tiny EnCodec briefly with CompressionSolver (default) or use an '
                             'untrained one (default with --quick: a minute less, noise-like audio)')
    parser.add_argument('--cache-dir', default=os.environ.get(
        'AUDIOCRAFT_EXT_DEMO_CACHE', str(Path.home() / '.cache' / 'audiocraft-ext' / 'demo')),
        help='where the data, compression model and base are cached (default: %(default)s)')
    parser.add_argument('--no-cache', action='store_true', help='rebuild the cached data, codec and base')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1),
                        help='torch threads of the training runs (default: %(default)s)')
    sizes = parser.add_argument_group('sizes (defaults; --quick uses smaller ones)')
    sizes.add_argument('--clips', type=int, help=f'clips per domain (default {defaults.clips})')
    sizes.add_argument('--duration', type=float, help=f'seconds per clip (default {defaults.duration:g})')
    sizes.add_argument('--segment', type=float,
                       help=f'seconds per training example and per generated clip (default {defaults.segment:g})')
    sizes.add_argument('--new-layers', type=int, help=f'new layers on the base (default {defaults.new_layers})')
    sizes.add_argument('--epochs', type=int, help=f'epochs of the extension (default {defaults.mission_epochs})')
    sizes.add_argument('--updates', type=int, help=f'updates per epoch (default {defaults.mission_updates})')
    sizes.add_argument('--base-epochs', type=int, help=f'epochs of the embedded base (default {defaults.base_epochs})')
    return parser


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    sizes = Sizes(**asdict(QUICK)) if args.quick else Sizes()
    for arg, field in [('clips', 'clips'), ('duration', 'duration'), ('segment', 'segment'),
                       ('new_layers', 'new_layers'), ('epochs', 'mission_epochs'),
                       ('updates', 'mission_updates'), ('base_epochs', 'base_epochs')]:
        value = getattr(args, arg, None)
        if value is not None:
            setattr(sizes, field, value)
    if sizes.segment > sizes.duration:
        raise SystemExit(f"--segment ({sizes.segment:g}) must not be longer than --duration ({sizes.duration:g}).")
    if min(sizes.clips, sizes.mission_epochs, sizes.mission_updates, sizes.new_layers) < 1:
        raise SystemExit("--clips, --epochs, --updates and --new-layers must be at least 1.")
    return sizes


# ------------------------------------------------------------------------------------------
# Cache


def _key(payload: tp.Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _config_text(name: str) -> str:
    return (Path(__file__).resolve().parents[1] / 'configs' / 'solver' / f'{name}.yaml').read_text()


def _done(folder: Path) -> tp.Optional[dict]:
    marker = folder / 'done.json'
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(folder: Path, info: dict) -> None:
    (folder / 'done.json').write_text(json.dumps(info, indent=2))


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# ------------------------------------------------------------------------------------------
# Runs through the Dora main of `python -m audiocraft_ext.train`


def run_in_process(argv: tp.List[str], log_path: Path) -> Path:
    """What `python -m audiocraft_ext.train *argv` does, in this process; returns the XP folder.

    Same Dora main, same Hydra composition, same `main(cfg)`; only the interpreter (and its
    half-minute AudioCraft import) is shared with the demo.
    """
    import hydra
    from .. import train
    argv = train.expand_config_flags(argv)
    xp = train.main.get_xp(argv)
    train.main.init_xp(xp)
    with condensed_stderr(log_path):
        try:
            with xp.enter():
                train.main.main(xp.cfg)
        finally:
            hydra.core.global_hydra.GlobalHydra.instance().clear()
    return Path(xp.folder)


def xp_folder(argv: tp.List[str]) -> Path:
    """The XP folder `python -m audiocraft_ext.train *argv` will use (its Dora signature)."""
    import hydra
    from .. import train
    try:
        return Path(train.main.get_xp(train.expand_config_flags(argv)).folder)
    finally:
        hydra.core.global_hydra.GlobalHydra.instance().clear()


def run_subprocess(module: str, argv: tp.List[str], log_path: Path, steps: Steps) -> tp.Dict[str, float]:
    """`python -m module *argv`, output to `log_path`, progress lines echoed; returns timings."""
    command = [sys.executable, '-m', module, *argv]
    steps.print('      $ ' + ' '.join(_quote(part) for part in ['python', '-m', module, *argv]))
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONUNBUFFERED='1')
    start = time.monotonic()
    first_progress: tp.Optional[float] = None
    with open(log_path, 'a', encoding='utf-8') as log_file:
        stream = CondensedLog(log_file)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            if first_progress is None and '| Epoch' in line:
                first_progress = time.monotonic()
            stream.write(line)
        code = process.wait()
    end = time.monotonic()
    if code != 0:
        tail = log_path.read_text(encoding='utf-8', errors='replace').splitlines()[-30:]
        raise RuntimeError(f"python -m {module} failed (exit code {code}); last lines of {log_path}:\n"
                           + '\n'.join(tail))
    return {'wall_s': end - start, 'work_s': end - (first_progress or start)}


def _quote(part: str) -> str:
    return part if all(c.isalnum() or c in '-_=./:,' for c in part) else repr(part)


def read_history(folder: Path) -> tp.List[dict]:
    path = folder / 'history.json'
    return json.loads(path.read_text()) if path.exists() else []


# ------------------------------------------------------------------------------------------
# Steps


def make_data(cache: Path, sizes: Sizes, seed: int, sample_rate: int, no_cache: bool) -> Path:
    """Both domains (and an `all` manifest for the codec), cached; returns the data root."""
    params = {'synth': SYNTH_VERSION, 'clips': sizes.clips, 'duration': sizes.duration,
              'seed': seed, 'sample_rate': sample_rate}
    root = cache / f'data-{_key(params)}'
    if _done(root) and not no_cache:
        return root
    _fresh(root)
    for domain in DOMAINS:
        write_dataset(root, domain, num_clips=sizes.clips, duration=sizes.duration,
                      sample_rate=sample_rate, seed=seed)
    for split in SPLITS:  # both domains, for the compression model
        lines = []
        for domain in DOMAINS:
            lines += (root / 'egs' / domain / split / 'data.jsonl').read_text().splitlines()
        atomic_write_text(root / 'egs' / 'all' / split / 'data.jsonl', '\n'.join(lines) + '\n')
    _mark_done(root, params)
    return root


def _common_overrides(args: argparse.Namespace, sizes: Sizes) -> tp.List[str]:
    return [f'device={args.device}', 'autocast=false', f'num_threads={args.threads}', f'seed={args.seed}',
            f'dataset.batch_size={sizes.batch_size}', 'dataset.num_workers=0']


def _reuse_or_clear(folder: Path, artefact: Path, args: argparse.Namespace, steps: Steps) -> tp.Optional[dict]:
    """The cached step's info (with `cached: True`) if `folder` holds a finished one, else an empty folder."""
    info = _done(folder)
    if info and not args.no_cache:
        steps.print(f"      cached: {artefact}")
        return {**info, 'cached': True}
    _fresh(folder)
    return None


def make_codec(cache: Path, data: Path, sizes: Sizes, args: argparse.Namespace, steps: Steps) -> tp.Tuple[Path, dict]:
    """Exported tiny EnCodec (`compression_state_dict.bin`), trained or random; cached."""
    params = {'version': DEMO_VERSION, 'data': data.name, 'kind': args.codec, 'seed': args.seed,
              'epochs': sizes.codec_epochs, 'updates': sizes.codec_updates,
              'config': _config_text('demo_compression')}
    folder = cache / f'codec-{_key(params)}'
    exported = folder / 'compression_state_dict.bin'
    cached = _reuse_or_clear(folder, exported, args, steps)
    if cached:
        return exported, cached
    start = time.monotonic()
    if args.codec == 'random':
        import torch
        from audiocraft.models import builders
        import omegaconf
        from .. import train
        cfg = omegaconf.OmegaConf.load(Path(train.CONFIG_DIR) / 'solver' / 'demo_compression.yaml')
        torch.manual_seed(args.seed)
        model = builders.get_compression_model(cfg)
        import audiocraft
        torch.save({'best_state': model.state_dict(), 'xp.cfg': omegaconf.OmegaConf.to_yaml(cfg),
                    'version': audiocraft.__version__, 'exported': True}, exported)
    else:
        from audiocraft.utils.export import export_encodec
        from ..io.torch_files import allow_omegaconf_in_torch_load
        argv = ['solver=demo_compression', f'egs_root={data / "egs" / "all"}', f'dora.dir={folder / "dora"}',
                *_common_overrides(args, sizes), f'optim.epochs={sizes.codec_epochs}',
                f'optim.updates_per_epoch={sizes.codec_updates}']
        xp = run_in_process(argv, folder / 'train.log')
        with allow_omegaconf_in_torch_load():
            export_encodec(xp / 'checkpoint.th', exported)
    info = {**params, 'train_s': time.monotonic() - start}
    info.pop('config')
    _mark_done(folder, info)
    return exported, {**info, 'cached': False}


def make_base(cache: Path, data: Path, codec: Path, sizes: Sizes, args: argparse.Namespace,
              steps: Steps) -> tp.Tuple[Path, dict]:
    """The tiny MusicGen trained on the old domain by MusicGenSolver, exported; cached."""
    params = {'version': DEMO_VERSION, 'data': data.name, 'codec': codec.parent.name, 'seed': args.seed,
              'dim': sizes.base_dim, 'layers': sizes.base_layers, 'epochs': sizes.base_epochs,
              'updates': sizes.base_updates, 'lr': sizes.base_lr, 'segment': sizes.segment,
              'batch_size': sizes.batch_size, 'config': _config_text('demo_musicgen_base')}
    folder = cache / f'base-{_key(params)}'
    exported = folder / 'exported'
    cached = _reuse_or_clear(folder, exported, args, steps)
    if cached:
        return exported, cached
    from audiocraft.utils.export import export_lm, export_pretrained_compression_model
    from ..io.torch_files import allow_omegaconf_in_torch_load
    start = time.monotonic()
    argv = ['solver=demo_musicgen_base', f'egs_root={data / "egs" / "old"}', f'dora.dir={folder / "dora"}',
            f'compression_model_checkpoint=//pretrained/{codec}', *_common_overrides(args, sizes),
            f'transformer_lm.dim={sizes.base_dim}', f'transformer_lm.num_layers={sizes.base_layers}',
            f'dataset.segment_duration={sizes.segment}', f'optim.epochs={sizes.base_epochs}',
            f'optim.updates_per_epoch={sizes.base_updates}', f'optim.lr={sizes.base_lr}',
            f'generate.lm.gen_duration={sizes.segment / 2:g}']
    xp = run_in_process(argv, folder / 'train.log')
    with allow_omegaconf_in_torch_load():
        export_lm(xp / 'checkpoint.th', exported / 'state_dict.bin')
        export_pretrained_compression_model(str(codec), exported / 'compression_state_dict.bin')
    _allow_short_training_segments(exported / 'state_dict.bin')
    shutil.copy(xp / 'history.json', folder / 'history.json')
    info = {**params, 'train_s': time.monotonic() - start}
    info.pop('config')
    _mark_done(folder, info)
    return exported, {**info, 'cached': False}


def _allow_short_training_segments(state_dict_file: Path, max_duration: float = 30.0) -> None:
    """Record `dataset.segment_duration = 30` in an exported LM trained on short segments.

    `MusicGen.__init__` takes its maximum generation window from that key and immediately sets
    `extend_stride=18`, which it asserts is shorter: stock `MusicGen.get_pretrained` cannot load
    an LM exported from 2 s segments. The window is only a limit for generation (the sinusoidal
    positions have no maximum); the demo generates clips no longer than the training segments.
    """
    import torch
    from omegaconf import OmegaConf
    pkg = torch.load(state_dict_file, map_location='cpu')
    cfg = OmegaConf.create(pkg['xp.cfg'])
    cfg.dataset.segment_duration = max(float(cfg.dataset.segment_duration), max_duration)
    pkg['xp.cfg'] = OmegaConf.to_yaml(cfg)
    torch.save(pkg, state_dict_file)


def mission_argv(base: str, data: Path, dora_dir: Path, sizes: Sizes, args: argparse.Namespace) -> tp.List[str]:
    """The overrides of `python -m audiocraft_ext.train` for the mission (small CPU sizes; the forgetting
    control's defaults, its replay set kept in the demo's cache)."""
    return ['--config=solver/extended_musicgen', f'pretrained_model_checkpoint={base}', 'dset=audio/egs',
            f'replay.cache_dir={Path(args.cache_dir).expanduser().resolve() / "replay"}',
            f'egs_root={data / "egs" / "new"}', f'dora.dir={dora_dir}', *_common_overrides(args, sizes),
            f'extended_model.num_additional_layers={sizes.new_layers}',
            f'dataset.segment_duration={sizes.segment}', 'dataset.min_segment_ratio=0.8',
            'dataset.sample_on_weight=false', 'dataset.sample_on_duration=false',
            'dataset.train.num_samples=256', 'dataset.train.merge_text_p=0', 'dataset.train.drop_desc_p=0',
            'dataset.train.drop_other_p=0', 'dataset.valid.num_samples=16', 'dataset.evaluate.num_samples=16',
            'dataset.generate.num_samples=2', f'optim.epochs={sizes.mission_epochs}',
            f'optim.updates_per_epoch={sizes.mission_updates}', f'optim.lr={sizes.mission_lr}',
            'schedule.lr_scheduler=null', 'generate.every=1000', 'evaluate.every=1000',
            'evaluate.compare_base=false',  # the report is step 6's (python -m audiocraft_ext.evaluate)
            'generate.audio.strategy=peak', 'generate.lm.prompted_samples=false',
            f'generate.lm.gen_duration={sizes.segment / 2:g}', 'checkpoint.save_every=null',
            'logging.log_updates=5']


def domain_prompts(data: Path, domain: str, count: int) -> tp.List[str]:
    """Captions of the domain's generate split (real captions: the LUT conditioner hashes whole strings)."""
    folder = data / 'audio' / domain / 'generate'
    captions = []
    for sidecar in sorted(folder.glob('*.json')):
        description = json.loads(sidecar.read_text())['description']
        if description not in captions:
            captions.append(description)
    return captions[:count]


def generate_clips(model_file: Path, data: Path, out: Path, sizes: Sizes, seed: int, device: str,
                   steps: Steps) -> tp.Dict[str, tp.Any]:
    """Clips for new- and old-domain captions, extended (scale 1) and base (scale 0)."""
    import torch
    from audiocraft.data.audio import audio_write
    from ..models.extended_musicgen import ExtendedMusicGen
    model = ExtendedMusicGen.get_pretrained(str(model_file), device=device)
    trainable, total = model.lm.parameter_counts()
    duration = min(sizes.segment, model.max_duration or sizes.segment)
    prompts = {domain: domain_prompts(data, domain, sizes.prompts) for domain in ('new', 'old')}
    written: tp.List[dict] = []
    jobs = [(variant, scale, domain) for variant, scale in (('extended', 1.0), ('base', 0.0))
            for domain in ('new', 'old')]
    for index, (variant, scale, domain) in enumerate(jobs):
        # every call: set_generation_params resets what it is not given (duration to 30 s)
        model.set_generation_params(duration=duration, use_sampling=True, top_k=50, extension_scale=scale)
        torch.manual_seed(seed)
        with torch.no_grad():
            wavs = model.generate(prompts[domain])  # [B, C, T]
        for number, (prompt, wav) in enumerate(zip(prompts[domain], wavs)):
            path = audio_write(out / 'audio' / variant / f'{domain}_{number}', wav.cpu(), model.sample_rate,
                               strategy='peak')
            written.append({'path': str(path), 'variant': variant, 'domain': domain, 'prompt': prompt})
        steps.print(f"      {index + 1}/{len(jobs)}: {len(prompts[domain])} {domain}-domain clips, "
                    f"{variant} (extension_scale={scale:g})")
    return {'clips': written, 'trainable': trainable, 'total': total, 'sample_rate': model.sample_rate,
            'duration': duration, 'generation_params': dict(model.generation_params),
            'num_base_layers': model.lm.num_base_layers,
            'num_additional_layers': model.lm.num_additional_layers}


def run_evaluate(xp: Path, dora_dir: Path, data: Path, log_path: Path, steps: Steps) -> dict:
    """`python -m audiocraft_ext.evaluate` on the run; returns its metrics.json."""
    argv = ['--config=solver/extended_musicgen', f'sig={xp.name}', f'dora.dir={dora_dir}',
            f'evaluate.reference_dset={data / "egs" / "old" / "evaluate"}',
            'evaluate.audio_metrics=false',  # generation-based metrics: minutes on a CPU; the demo's clips are step 5's
            'evaluate.samples=false']
    run_subprocess('audiocraft_ext.evaluate', argv, log_path, steps)
    metrics_path = xp / 'evaluation' / 'metrics.json'
    metrics = json.loads(metrics_path.read_text())
    metrics['_path'] = str(metrics_path)
    return metrics


def _get(metrics: dict, *keys: str) -> float:
    value: tp.Any = metrics
    for key in keys:
        value = value[key]
    return float(value)


# ------------------------------------------------------------------------------------------
# The demo


def run_demo(args: argparse.Namespace) -> int:
    from ..models.extended_musicgen import ExtendedMusicGen, load_base
    sizes = sizes_from_args(args)
    if getattr(args, 'codec', None) is None:
        args.codec = 'random' if args.quick else 'train'
    out = Path(args.out).expanduser().resolve()
    cache = Path(args.cache_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    for stale in ('audio', 'plots', 'dora', 'model.safetensors', 'summary.json', 'metrics.json', 'report'):
        target = out / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    logs = out / 'logs'
    logs.mkdir(exist_ok=True)
    steps = Steps(STEPS)
    steps.print(f"audiocraft-ext demo{' --quick' if args.quick else ''}: freeze a MusicGen trained on one "
                f"music domain, train {sizes.new_layers} new layer(s) on top for another. Output: {out}")
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')

    steps.begin(STEPS[0], f"{sizes.clips} clips x {sizes.duration:g} s per domain")
    sample_rate = 16000
    if args.base:
        sample_rate = load_base(args.base, args.device)[0].sample_rate
    data = make_data(cache, sizes, args.seed, sample_rate, args.no_cache)
    steps.end(str(data))

    base_info: dict = {}
    if args.base:
        steps.begin(STEPS[1], f"skipped: the base {args.base} brings its own")
        steps.end()
        steps.begin(STEPS[2], f"skipped: extending {args.base}")
        base_ref = args.base
        steps.end()
    else:
        steps.begin(STEPS[1], f"tiny EnCodec, {args.codec} "
                    f"({sizes.codec_epochs} epochs x {sizes.codec_updates} updates, CompressionSolver)"
                    if args.codec == 'train' else "tiny EnCodec, random weights")
        codec, codec_info = make_codec(cache, data, sizes, args, steps)
        steps.end('cached' if codec_info['cached'] else '')
        steps.begin(STEPS[2], f"{sizes.base_layers} layers, dim {sizes.base_dim}, {sizes.base_epochs} epochs x "
                    f"{sizes.base_updates} updates with AudioCraft's MusicGenSolver")
        base_dir, base_info = make_base(cache, data, codec, sizes, args, steps)
        base_ref = str(base_dir)
        steps.end('cached' if base_info['cached'] else '')

    steps.begin(STEPS[3], f"{sizes.new_layers} new layer(s), {sizes.mission_epochs} epochs x "
                f"{sizes.mission_updates} updates")
    dora_dir = out / 'dora'
    argv = mission_argv(base_ref, data, dora_dir, sizes, args)
    xp = xp_folder(argv)
    timing = run_subprocess('audiocraft_ext.train', argv, logs / 'train.log', steps)
    steps.end(f"XP {xp.name}")

    steps.begin(STEPS[4], f"ExtendedMusicGen.get_pretrained, {sizes.prompts} prompts per domain")
    model_file = ExtendedMusicGen.from_solver_checkpoint(xp, state='best', device=args.device).save(
        out / 'model.safetensors')
    steps.print(f"      exported the best state to {model_file}")
    generation = generate_clips(model_file, data, out, sizes, args.seed, args.device, steps)
    steps.end()

    steps.begin(STEPS[5], "python -m audiocraft_ext.evaluate")
    metrics = run_evaluate(xp, dora_dir, data, logs / 'evaluate.log', steps)
    shutil.copy(metrics['_path'], out / 'metrics.json')
    steps.end()

    steps.begin(STEPS[6])
    histories = {'extension on the new domain': read_history(xp)}
    if base_info:
        histories = {'base on the old domain (MusicGenSolver)': json.loads(
            (Path(base_ref).parent / 'history.json').read_text()), **histories}
    loss_plot = plot_loss_curves(histories, out / 'plots' / 'loss_curves.png')
    sweep_plot = metrics.get('plots', {}).get('scale_sweep')
    if sweep_plot and Path(sweep_plot).exists() and Path(sweep_plot).parent != out / 'plots':
        sweep_plot = str(shutil.copy(sweep_plot, out / 'plots' / 'scale_sweep.png'))
    ce = {domain: {variant: _get(metrics, 'sets', key, variant, 'ce') for variant in ('base', 'extended')}
          for domain, key in (('new', 'new'), ('old', 'reference'))}
    steps.end()
    summary = {
        'out': str(out), 'quick': bool(args.quick), 'seed': args.seed, 'sizes': asdict(sizes),
        'base': {'reference': base_ref, 'embedded': not args.base, 'cached': base_info.get('cached'),
                 'train_s': base_info.get('train_s')},
        'xp': str(xp), 'model': str(model_file),
        'trainable_params': generation['trainable'], 'total_params': generation['total'],
        'trainable_fraction': generation['trainable'] / generation['total'],
        'training_wall_s': timing['wall_s'], 'training_s': timing['work_s'],
        'cross_entropy': ce, 'metrics': str(out / 'metrics.json'),
        # nats per token on held-out clips: what the new domain gained, what the old one lost
        'gain_new': ce['new']['base'] - ce['new']['extended'],
        'forgetting_old': ce['old']['extended'] - ce['old']['base'],
        'forgetting_control': forgetting_control_defaults(),
        'clips': generation['clips'], 'clip_duration': generation['duration'],
        'generation_params': generation['generation_params'], 'data': str(data),
        'plots': {'loss_curves': str(loss_plot), 'scale_sweep': sweep_plot},
        'step_times_s': steps.times, 'total_s': steps.total,
    }
    summary['report'] = str(write_demo_report(out, summary, metrics))
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print_summary(summary, generation, steps)
    return 0


def forgetting_control_defaults() -> tp.Dict[str, tp.Any]:
    """The `replay.*` / `distill.*` defaults of solver/extended_musicgen.yaml, which the mission uses."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(_config_text('extended_musicgen'))
    return {'replay_ratio': float(cfg.replay.ratio), 'replay_source': 'manifest' if cfg.replay.manifest else
            "the base's own generations", 'replay_ce_weight': float(cfg.replay.ce_weight),
            'distill_weight': float(cfg.distill.weight)}


def print_summary(summary: dict, generation: dict, steps: Steps) -> None:
    ce = summary['cross_entropy']
    rel = lambda path: os.path.relpath(path) if not os.path.relpath(path).startswith('..') else path  # noqa: E731
    base = summary['base']
    control = summary['forgetting_control']
    base_line = (f"tiny MusicGen, {generation['num_base_layers']} layers, trained on the old domain "
                 f"by MusicGenSolver ({'cached' if base['cached'] else format_seconds(base['train_s'])})"
                 if base['embedded'] else base['reference'])
    width = 78
    lines = [
        '=' * width,
        f"Frozen base + {generation['num_additional_layers']} new layer(s), trained on the new domain",
        f"  base          {base_line}",
        f"  trainable     {summary['trainable_params']:,} of {summary['total_params']:,} parameters "
        f"({100 * summary['trainable_fraction']:.1f}%)",
        f"  training      {format_seconds(summary['training_s'])} "
        f"({format_seconds(summary['training_wall_s'])} with start-up)",
        "  cross entropy (lower is better)                  base  extended",
        f"    new domain (fast, minor, plucks/leads/bells)  {ce['new']['base']:6.3f}    {ce['new']['extended']:6.3f}"
        f"  ({ce['new']['extended'] - ce['new']['base']:+.3f})",
        f"    old domain (slow, major, pads/organ/flute)    {ce['old']['base']:6.3f}    {ce['old']['extended']:6.3f}"
        f"  ({ce['old']['extended'] - ce['old']['base']:+.3f})",
        f"  gain          {summary['gain_new']:+.3f} nats/token on the new domain (base - extended)",
        f"  forgetting    {summary['forgetting_old']:+.3f} nats/token on the old domain (extended - base)",
        f"  forgetting control  replay of {control['replay_source']} (ratio {control['replay_ratio']:g}) + KL "
        f"to the base's logits (weight {control['distill_weight']:g}): the solver's defaults",
        f"  audio         {rel(summary['out'])}/audio/{{extended,base}}/{{new,old}}_*.wav "
        f"({len(summary['clips'])} clips, {generation['duration']:g} s)",
        f"  plots         {rel(summary['plots']['loss_curves'])}",
        f"                {rel(summary['plots']['scale_sweep']) if summary['plots']['scale_sweep'] else '-'}",
        f"  metrics       {rel(summary['metrics'])} (python -m audiocraft_ext.evaluate), summary.json, logs/",
        f"  listen        {rel(summary['report'])} (open it in a browser)",
        f"  total time    {format_seconds(summary['total_s'])}",
        '=' * width,
    ]
    for line in lines:
        steps.print(line)
