"""Training step time and peak memory: extended model (N new layers on a frozen base) vs full
fine-tuning of the same base, and the limits of the design, measured side by side in one run.

Every variant runs the same step on the same batch (random codes, text conditions with CFG
dropout): `lm.compute_predictions` -> masked cross entropy (`MusicGenSolver._compute_cross_entropy`)
-> backward -> gradient clipping -> AdamW (AudioCraft's optimizer builder, MusicGen's optim config)
over the trainable parameters; on CUDA under fp16 autocast with a GradScaler, as MusicGenSolver.

    full        plain `LMModel` of L layers, every parameter trainable (full fine-tuning)
    extended    `ExtendedLMModel`: frozen base (no-grad forward) + N new layers, the full step
    (a) base    no-grad forward of the frozen base transformer alone (same inputs)
    (b) cache   the extended step with the base transformer replaced by its precomputed output
                (a feature-cache hit): new layers + frozen heads forward/backward + optimizer
    limit       (a) + (b): what the extended step would cost with zero overhead

The issue's estimates count layers alone (forward = 1, backward = 2): full fine-tuning 3L,
extended L + 3N, feature cache 3N; at N = L/2 that is 0.83x and 0.5x of full fine-tuning.

    python benchmarks/bench_training.py                 # CPU: dim 256, L = 8, N = 4, batch 4, 150 steps
    python benchmarks/bench_training.py --device cuda   # musicgen-small shapes: dim 1024, L = 24,
                                                        # 16 heads, N = 12, batch 8, 1500 steps, fp16
"""
import argparse
import json
import statistics
import typing as tp

import torch

import common

PRESETS = {
    'cpu': dict(dim=256, layers=8, heads=8, new_layers=4, card=2048, n_q=4, batch=4, steps=150, repeats=12),
    'musicgen-small': dict(dim=1024, layers=24, heads=16, new_layers=12, card=2048, n_q=4, batch=8,
                           steps=1500, repeats=10),
}


def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        help='shapes; default: cpu on CPU, musicgen-small on CUDA (options below override)')
    for name in PRESETS['cpu']:
        parser.add_argument('--' + name.replace('_', '-'), type=int, dest=name)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1: on a small shared CPU, multi-threaded ops '
                             'wait for descheduled threads and the timings become noise; 0: torch default)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak memory measurement')
    parser.add_argument('--memory-only', action='store_true',
                        help='one step per variant, peak memory only (large shapes on CPU)')
    parser.add_argument('--out', default=str(common.DEFAULT_OUT), help='folder for the JSON results')
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset or ('musicgen-small' if args.device.startswith('cuda') else 'cpu')]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def layer_estimates(layers: int, new_layers: int) -> tp.Dict[str, float]:
    """The issue's layer-count estimates, relative to full fine-tuning (3L)."""
    return {'extended': (layers + 3 * new_layers) / (3 * layers), 'cache': new_layers / layers}


def build_variants(args: argparse.Namespace) -> tp.Tuple[tp.Dict[str, tp.Callable[[], tp.Any]], tp.Dict[str, tp.Any]]:
    """The steps to compare, and what the report needs about them."""
    torch.manual_seed(0)
    base = common.build_base(args.dim, args.layers, args.heads, args.card, args.n_q, args.device)
    batch = common.random_batch(args.batch, args.n_q, args.steps, args.card, args.device)

    full_lm = common.full_finetuning_lm(base.lm)
    extended = common.extended_lm(base.lm, args.new_layers)
    cached = common.extended_lm(base.lm, args.new_layers)
    cached.load_state_dict(extended.state_dict())
    x, base_kwargs, features = common.capture_base_io(extended, batch, args.device)
    cached.transformer.base = common.PrecomputedFeatures(features)  # the base layers are gone
    base_transformer = extended.base_transformer

    def base_forward():
        with torch.no_grad(), common.autocast_context(args.device):
            base_transformer(x, **base_kwargs)

    steps = {
        'full': common.TrainingStep(full_lm, batch, args.device),
        'extended': common.TrainingStep(extended, batch, args.device),
        'base': base_forward,
        'cache': common.TrainingStep(cached, batch, args.device),
    }
    trainable, total = extended.parameter_counts()
    info = {'trainable': trainable, 'total': total,
            'full_trainable': sum(p.numel() for p in full_lm.parameters()),
            'feature_bytes_per_token': features[0, 0].numel() * 2}  # fp16 on disk
    return steps, info


def measure(args: argparse.Namespace) -> tp.Dict[str, tp.Any]:
    steps, info = build_variants(args)
    if args.memory_only:
        args.repeats = 1
    times = common.run_alternating(steps, args.repeats, args.device, warmup=0 if args.memory_only else 1)
    results: tp.Dict[str, tp.Any] = {'config': vars(args), 'info': info, 'variants': {}}
    for name, step in steps.items():
        wall, wall_spread = common.median_and_spread(times[name]['wall'])
        cpu, cpu_spread = common.median_and_spread(times[name]['cpu'])
        entry = {'wall': wall, 'wall_spread': wall_spread, 'cpu': cpu, 'cpu_spread': cpu_spread,
                 'wall_all': times[name]['wall'], 'cpu_all': times[name]['cpu']}
        if args.device == 'cpu' and not args.memory_only:
            entry['gflop'] = common.count_flops(step) / 1e9  # same step once more, FLOPs counted
        if not args.no_memory and isinstance(step, common.TrainingStep):
            entry['peak_step_bytes'] = common.peak_step_bytes(step, args.device)
            entry['resident_bytes'] = step.resident_bytes()
            entry['peak_bytes'] = entry['resident_bytes'] + entry['peak_step_bytes']
        results['variants'][name] = entry
    base, cache = results['variants']['base'], results['variants']['cache']
    limit = {key: base[key] + cache[key] for key in ('wall', 'cpu', 'gflop') if key in base}
    for clock in ('wall', 'cpu'):  # per round, to pair it with the other variants of that round
        limit[clock + '_all'] = [a + b for a, b in zip(base[clock + '_all'], cache[clock + '_all'])]
    results['variants']['limit'] = limit
    return results


def paired_ratio(entry: tp.Dict[str, tp.Any], reference: tp.Dict[str, tp.Any], clock: str) -> tp.Tuple[float, float, float]:
    """Median, min and max over rounds of entry / reference measured in the same round.

    Load on a shared machine drifts over seconds; the two steps of one round see nearly the same
    load, so the per-round ratio is steadier than the ratio of the medians.
    """
    ratios = [a / b for a, b in zip(entry[clock + '_all'], reference[clock + '_all'])]
    return statistics.median(ratios), min(ratios), max(ratios)


def report(results: tp.Dict[str, tp.Any]) -> str:
    args = argparse.Namespace(**results['config'])
    variants = results['variants']
    on_cpu = args.device == 'cpu'
    clock = 'cpu' if on_cpu else 'wall'
    lines = [f"device={args.device} dim={args.dim} L={args.layers} N={args.new_layers} heads={args.heads} "
             f"card={args.card} K={args.n_q} batch={args.batch} steps={args.steps} repeats={args.repeats}"
             + ('' if on_cpu else ' autocast=fp16'),
             f"machine: {results['machine']}",
             f"trainable params: extended {results['info']['trainable']:,} of {results['info']['total']:,} "
             f"({100 * results['info']['trainable'] / results['info']['total']:.1f}%), "
             f"full fine-tuning {results['info']['full_trainable']:,}",
             '',
             f"{'variant':<42}{'wall s':>8}{'spread':>8}{'cpu s':>8}{'spread':>8}{'GFLOP':>8}{'peak MiB':>10}"]
    names = {'full': 'full fine-tuning (L layers trainable)', 'extended': 'extended (frozen L + N new)',
             'base': '(a) no-grad forward of the frozen base', 'cache': '(b) new layers + heads (feature cache)',
             'limit': 'limit = (a) + (b)'}
    for key, label in names.items():
        entry = variants[key]
        spread = lambda name: f"{100 * entry[name]:>7.0f}%" if name in entry else f"{'':>8}"  # noqa: E731
        lines.append(f"{label:<42}{entry['wall']:>8.3f}{spread('wall_spread')}{entry['cpu']:>8.3f}"
                     f"{spread('cpu_spread')}"
                     + (f"{entry['gflop']:>8.1f}" if 'gflop' in entry else f"{'':>8}")
                     + (f"{entry['peak_bytes'] / 2**20:>10.0f}" if 'peak_bytes' in entry else ''))

    estimate = layer_estimates(args.layers, args.new_layers)
    full = variants['full']

    def ratio(key: str, clock: str, reference: str = 'full') -> str:
        """Paired per-round ratio: 'median [min-max]'; FLOPs: exact ratio."""
        entry, ref = variants[key], variants[reference]
        if clock == 'gflop':
            return f"{entry['gflop'] / ref['gflop']:>8.3f}" if 'gflop' in entry and 'gflop' in ref else f"{'-':>8}"
        median, low, high = paired_ratio(entry, ref, clock)
        return f"{median:>8.3f} [{low:.2f}-{high:.2f}]"

    rows = [('extended step', 'extended', 'full', f"{estimate['extended']:>10.3f}", ''),
            ('limit: no-grad base + new layers', 'limit', 'full', f"{estimate['extended']:>10.3f}", ''),
            ('feature cache: new layers + heads only', 'cache', 'full', f"{estimate['cache']:>10.3f}", '  <= 0.55'),
            ('extended step / limit', 'extended', 'limit', f"{1.0:>10.3f}", '  <= 1.10')]
    lines += ['', f"{'ratio vs full fine-tuning':<42}{'wall [min-max]':>20}{'cpu [min-max]':>20}"
                  f"{'FLOPs':>8}{'estimate':>10}  target"]
    for label, key, reference, estimate_text, target in rows:
        lines.append(f"{label:<42}{ratio(key, 'wall', reference):>20}{ratio(key, 'cpu', reference):>20}"
                     f"{ratio(key, 'gflop', reference)}{estimate_text}{target}")
    if 'peak_bytes' in full:
        lines += [f"{'peak memory: extended':<42}{variants['extended']['peak_bytes'] / full['peak_bytes']:>20.3f}"
                  f"{'':>38}  <= 0.50",
                  f"{'peak memory: feature cache':<42}{variants['cache']['peak_bytes'] / full['peak_bytes']:>20.3f}",
                  '', 'peak memory = resident (weights, buffers, optimizer state) + peak allocated during the step:']
        for key in ('full', 'extended', 'cache'):
            entry = variants[key]
            lines.append(f"  {names[key]:<42} {entry['resident_bytes'] / 2**20:8.1f} MiB + "
                         f"{entry['peak_step_bytes'] / 2**20:8.1f} MiB")
    if args.memory_only:
        lines += ['', 'memory only: the times above are of one cold step each, not measurements.']
    lines += ['', f"times: medians over {args.repeats} alternating rounds, spread = (max - min) / median; "
                  "ratios: median [min-max] over rounds of the ratio within a round.",
              f"targets are read on {clock} time"
              + (' (CPU time of this process: steadier than wall time on a shared CPU).' if on_cpu else '.')]
    return '\n'.join(lines)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.Dict[str, tp.Any]:
    args = parse_args(argv)
    if args.threads and args.device == 'cpu':
        torch.set_num_threads(args.threads)
    results = measure(args)
    results['machine'] = common.machine_description(args.device)
    text = report(results)
    print(text)
    out = common.ensure_out(args.out)
    (out / 'bench_training.json').write_text(json.dumps(results, indent=1))
    (out / 'bench_training.txt').write_text(text + '\n')
    return results


if __name__ == '__main__':
    main()
