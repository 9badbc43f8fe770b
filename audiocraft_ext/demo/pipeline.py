"""`audiocraft-ext demo`: the whole method, offline, on a CPU, in a few minutes.

Steps (each printed as `[x/N] name`):

1. **Data**: a two-domain captioned dataset of real music (`audiocraft_ext.data.score_dataset`):
   excerpts of public-domain scores rendered with FluidSynth, an ``old`` domain (Bach chorales on
   church organ or strings) and a ``new`` one (Irish reels, jigs and hornpipes on fiddle or
   flute), in AudioCraft's layout.
2. **Pretrained base**: the tiny MusicGen shipped with the package (`models.shipped`: a 16 kHz
   EnCodec and a MusicGen LM trained on the old domain's train pieces by AudioCraft's own
   `MusicGenSolver`, both made once by scripts/make_pretrained.py), written into the layout
   stock `MusicGen.get_pretrained(dir)` loads and cached under `--cache-dir`; its tokenizer is
   checked on both domains' held-out clips (`codec_health`). `--pretrained DIR` takes another
   such folder.
3. **Extension run**: `python -m audiocraft_ext.train --config=solver/extended_musicgen
   pretrained_model_checkpoint=<base> egs_root=<new domain> ...` in a subprocess: the command
   users run, printed in full.
4. **Generate**: the run is exported (`audiocraft-ext export`'s code) to one file, loaded with
   `ExtendedMusicGen.get_pretrained` and asked for clips from new- and old-domain captions, at
   `extension_scale` 1.0 (extended) and 0.0 (exactly the base); a classifier fitted on both
   domains' real clips scores how new-domain each model's clips sound (`audible`).
5. **Evaluate**: `python -m audiocraft_ext.evaluate` on the run (cross entropy of base and
   extended on the new domain and on the old one, extension_scale sweep and its plot).
6. **Summary**: loss curves from the runs' `history.json`, `summary.json`, the listening report
   `OUT/report/report.html` (base, extended and dataset clip per caption, metrics, plots), and
   the summary.

`--base PATH_OR_ID` skips step 2 and extends a real pretrained MusicGen instead.

This module is the order of the steps; each job is in its own module: `arguments` (sizes and
options), `artefacts` (the cache, the data), `bases` (codec and base), `runs` (training and
evaluation runs), `clips` (generation), `summary`, `report_page`, `progress`.
"""
import argparse
from dataclasses import asdict
import json
import os
from pathlib import Path
import shutil

from ..evaluation.plots import plot_loss_curves
from ..models.extended_musicgen import ExtendedMusicGen, load_base
from ..models.shipped import PRETRAINED_DIR
from .arguments import sizes_from_args
from .artefacts import make_data
from .audible import audible_measure
from .bases import pretrained_base
from .clips import generate_clips
from .progress import Steps
from .report_page import write_demo_report
from .runs import extension_run_argv, read_history, run_evaluate, run_subprocess, xp_folder
from .summary import cross_entropy, forgetting_control_defaults, print_summary

STEPS = ('Music data', 'Pretrained base MusicGen', 'Extend and train on the new domain', 'Export and generate',
         'Evaluate', 'Summary')


def run_demo(args: argparse.Namespace) -> int:
    """`audiocraft-ext demo` with the options of `arguments.add_arguments`: the steps above, in order; returns 0."""
    sizes = sizes_from_args(args)
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
        steps.begin(STEPS[1], f"skipped: extending {args.base}")
        base_ref = args.base
        steps.end()
    else:
        folder = Path(args.pretrained).expanduser().resolve() if args.pretrained else PRETRAINED_DIR
        steps.begin(STEPS[1], f"tiny EnCodec and MusicGen from {folder}")
        base_dir, base_info = pretrained_base(cache, data, folder, args.no_cache, steps)
        base_ref = str(base_dir)
        steps.end('cached' if base_info['cached'] else '')

    steps.begin(STEPS[2], f"{sizes.new_layers} new layer(s), {sizes.extension_epochs} epochs x "
                f"{sizes.extension_updates} updates")
    dora_dir = out / 'dora'
    argv = extension_run_argv(base_ref, data, dora_dir, sizes, args)
    xp = xp_folder(argv)
    timing = run_subprocess('audiocraft_ext.train', argv, logs / 'train.log', steps)
    steps.end(f"XP {xp.name}")

    steps.begin(STEPS[3], f"ExtendedMusicGen.get_pretrained, {sizes.prompts} prompts per domain")
    model_file = ExtendedMusicGen.from_solver_checkpoint(xp, state='best', device=args.device).save(
        out / 'model.safetensors')
    steps.print(f"      exported the best state to {model_file}")
    generation = generate_clips(model_file, data, out, sizes, args.seed, args.device, steps)
    audible = audible_measure(data, generation['clips'], generation['sample_rate'], generation['duration'])
    steps.end()

    steps.begin(STEPS[4], "python -m audiocraft_ext.evaluate")
    metrics = run_evaluate(xp, dora_dir, data, logs / 'evaluate.log', steps)
    shutil.copy(metrics['_path'], out / 'metrics.json')
    steps.end()

    steps.begin(STEPS[5])
    histories = {'extension on the new domain': read_history(xp)}
    loss_plot = plot_loss_curves(histories, out / 'plots' / 'loss_curves.png')
    sweep_plot = metrics.get('plots', {}).get('scale_sweep')
    if sweep_plot and Path(sweep_plot).exists() and Path(sweep_plot).parent != out / 'plots':
        sweep_plot = str(shutil.copy(sweep_plot, out / 'plots' / 'scale_sweep.png'))
    ce = cross_entropy(metrics)
    steps.end()
    summary = {
        'out': str(out), 'quick': bool(args.quick), 'seed': args.seed, 'sizes': asdict(sizes),
        'base': {'reference': base_ref, 'embedded': not args.base, 'cached': base_info.get('cached'),
                 'pretrained': base_info.get('folder')},
        # the pretrained codec's tokens on both domains' held-out clips (codec_health)
        'codec': ({key: base_info[key] for key in ('codes_used', 'perplexity')} if base_info else None),
        'xp': str(xp), 'model': str(model_file),
        'trainable_params': generation['trainable'], 'total_params': generation['total'],
        'trainable_fraction': generation['trainable'] / generation['total'],
        'training_wall_s': timing['wall_s'], 'training_s': timing['work_s'],
        'cross_entropy': ce, 'metrics': str(out / 'metrics.json'),
        # nats per token on held-out clips: what the new domain gained, what the old one lost
        'gain_new': ce['new']['base'] - ce['new']['extended'],
        'forgetting_old': ce['old']['extended'] - ce['old']['base'],
        'forgetting_control': forgetting_control_defaults(),
        # how new-domain the generated clips sound (evaluation.domain_classifier), per caption domain
        'audible': audible,
        'clips': generation['clips'], 'clip_duration': generation['duration'],
        'generation_params': generation['generation_params'], 'data': str(data),
        'plots': {'loss_curves': str(loss_plot), 'scale_sweep': sweep_plot},
        'step_times_s': steps.times, 'total_s': steps.total,
    }
    summary['report'] = str(write_demo_report(out, summary, metrics))
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print_summary(summary, generation, steps)
    return 0
