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
                held in memory: new layers + frozen heads forward/backward + optimizer
    limit       (a) + (b): what the extended step would cost with zero overhead
    disk cache  the extended step with the real feature cache (`feature_cache.path`), warm: keys
                hashed, the base's outputs read from disk instead of computed
    checkpoint  the extended step with activation checkpointing of the new layers
                (`layer_overrides: {checkpointing: torch}`): memory for one more forward of N layers
    fp16 base   the extended step with the frozen base transformer stored in float16
                (`extended_model.base_dtype=float16`): computed on float32 copies, layer by layer
    low memory  fp16 base + checkpoint: the configuration with the smallest peak memory

The issue's estimates count layers alone (forward = 1, backward = 2): full fine-tuning 3L,
extended L + 3N, feature cache 3N; at N = L/2 that is 0.83x and 0.5x of full fine-tuning.

    python benchmarks/bench_training.py                 # CPU: dim 256, L = 8, N = 4, batch 4, 150 steps
    python benchmarks/bench_training.py --device cuda   # musicgen-small shapes: dim 1024, L = 24,
                                                        # 16 heads, N = 12, batch 8, 1500 steps, fp16
"""
import argparse
import copy
import gc
import statistics
import tempfile
import typing as tp

import torch

from audiocraft_ext.models.extended_lm import ExtendedLMModel, FrozenBaseWithExtension
from audiocraft_ext.models.feature_cache import BaseFeatureCache

import common

PRESETS = {
    'cpu': dict(dim=256, layers=8, heads=8, new_layers=4, card=2048, n_q=4, batch=4, steps=150, repeats=12),
    'musicgen-small': dict(dim=1024, layers=24, heads=16, new_layers=12, card=2048, n_q=4, batch=8,
                           steps=1500, repeats=10),
}


# The variants that are the extended step with other settings: (base dtype, layer overrides).
EXTENDED_SETTINGS: tp.Dict[str, tp.Tuple[tp.Optional[torch.dtype], tp.Dict[str, tp.Any]]] = {
    'extended': (None, {}),
    'checkpoint': (None, {'checkpointing': 'torch'}),
    'half_base': (torch.float16, {}),
    'low_memory': (torch.float16, {'checkpointing': 'torch'}),
}
# Peak memory rows compared with the 0.5x target.
MEMORY_TARGETS = ('extended', 'low_memory')


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
    parser.add_argument('--cache-warmup', type=int, default=8,
                        help='steps run with the disk feature cache before timing it')
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


class Variants:
    """The steps to compare, built on demand: `--memory-only` at large shapes holds one at a time.

    The extended variants share one frozen copy of the base (frozen weights are never written)
    and start from the same new layers; each step's resident memory still counts the base.
    """
    def __init__(self, args: argparse.Namespace, cache_dir: str):
        torch.manual_seed(0)
        self.args, self.cache_dir = args, cache_dir
        base = common.build_base(args.dim, args.layers, args.heads, args.card, args.n_q, args.device)
        self.batch = common.random_batch(args.batch, args.n_q, args.steps, args.card, args.device)
        self.frozen_base = base.lm
        self.full_trainable = sum(p.numel() for p in base.lm.parameters())
        self.template = ExtendedLMModel(self.frozen_base, args.new_layers).train()
        self.x, self.base_kwargs, self.features = common.capture_base_io(self.template, self.batch, args.device)
        self.disk_cache: tp.Optional[BaseFeatureCache] = None
        self.names = ['full', 'extended', 'base', 'cache', 'disk_cache', 'checkpoint', 'half_base', 'low_memory']

    def extended(self, base_dtype: tp.Optional[torch.dtype] = None, **layer_overrides: tp.Any) -> ExtendedLMModel:
        """The template's new layers on the shared frozen base, or on a copy stored in `base_dtype`."""
        base = self.frozen_base if base_dtype is None else copy.deepcopy(self.frozen_base)
        lm = ExtendedLMModel(base, self.args.new_layers, **layer_overrides).train()
        if base_dtype is not None:
            lm.store_base_in(base_dtype)
        lm.load_extension_state_dict(self.template.extension_state_dict())
        return lm

    def build(self, name: str) -> tp.Callable[[], tp.Any]:
        args, batch = self.args, self.batch
        if name == 'full':
            return common.TrainingStep(common.full_finetuning_lm(self.frozen_base), batch, args.device)
        if name == 'base':
            def base_forward():
                with torch.no_grad(), common.autocast_context(args.device):
                    self.template.base_transformer(self.x, **self.base_kwargs)
            return base_forward
        if name == 'cache':
            lm = self.extended()
            # A FrozenBaseWithExtension of its own: the shared base stays in the other variants.
            lm.transformer = FrozenBaseWithExtension(common.PrecomputedFeatures(self.features), lm.extension)
            return common.TrainingStep(lm, batch, args.device)
        if name == 'disk_cache':
            lm = self.extended()
            self.disk_cache = lm.use_feature_cache(self.cache_dir)
            step = common.TrainingStep(lm, batch, args.device)
            # Warm it: CFG dropout draws conditioned or null conditions per example, two keys each.
            for _ in range(args.cache_warmup):
                step()
            self.disk_cache.take_counts()
            return step
        base_dtype, overrides = EXTENDED_SETTINGS[name]
        return common.TrainingStep(self.extended(base_dtype, **overrides), batch, args.device)

    def info(self) -> tp.Dict[str, tp.Any]:
        trainable, total = self.template.parameter_counts()
        info = {'trainable': trainable, 'total': total, 'full_trainable': self.full_trainable,
                'feature_bytes_per_token': self.features[0, 0].numel() * self.features.element_size()}
        if self.disk_cache is not None:
            hits, misses = self.disk_cache.take_counts()
            info['disk_cache_hit_rate'] = hits / max(1, hits + misses)
            info['disk_cache_bytes'] = self.disk_cache.bytes_written
            info['disk_cache_entries'] = len(list(self.disk_cache.folder.rglob('*.pt')))
        return info


def measure(args: argparse.Namespace) -> tp.Dict[str, tp.Any]:
    with tempfile.TemporaryDirectory() as cache_dir:
        variants = Variants(args, cache_dir)
        if args.memory_only:  # one cold step each, one variant in memory at a time
            args.repeats = 1
            entries = {}
            for name in variants.names:
                step = variants.build(name)
                times = common.run_alternating({name: step}, 1, args.device, warmup=0)
                entries[name] = measure_step(args, step, times[name])
                del step
                gc.collect()
        else:
            steps = {name: variants.build(name) for name in variants.names}
            times = common.run_alternating(steps, args.repeats, args.device)
            entries = {name: measure_step(args, step, times[name]) for name, step in steps.items()}
        info = variants.info()
    base, cache = entries['base'], entries['cache']
    limit = {key: base[key] + cache[key] for key in ('wall', 'cpu', 'gflop') if key in base}
    for clock in ('wall', 'cpu'):  # per round, to pair it with the other variants of that round
        limit[clock + '_all'] = [a + b for a, b in zip(base[clock + '_all'], cache[clock + '_all'])]
    entries['limit'] = limit
    return {'config': vars(args), 'info': info, 'variants': entries}


def measure_step(args: argparse.Namespace, step: tp.Callable[[], tp.Any],
                 times: tp.Dict[str, tp.List[float]]) -> tp.Dict[str, tp.Any]:
    """Timing summary of one variant, plus its FLOPs (CPU) and peak memory."""
    wall, wall_spread = common.median_and_spread(times['wall'])
    cpu, cpu_spread = common.median_and_spread(times['cpu'])
    entry = {'wall': wall, 'wall_spread': wall_spread, 'cpu': cpu, 'cpu_spread': cpu_spread,
             'wall_all': times['wall'], 'cpu_all': times['cpu']}
    if args.device == 'cpu' and not args.memory_only:
        entry['gflop'] = common.count_flops(step) / 1e9  # same step once more, FLOPs counted
    if not args.no_memory and isinstance(step, common.TrainingStep):
        entry['peak_step_bytes'] = common.peak_step_bytes(step, args.device)
        entry['resident_bytes'] = step.resident_bytes()
        entry['peak_bytes'] = entry['resident_bytes'] + entry['peak_step_bytes']
    return entry


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
             'limit': 'limit = (a) + (b)', 'disk_cache': 'extended + feature cache on disk (warm)',
             'checkpoint': 'extended + activation checkpointing',
             'half_base': 'extended + float16 base', 'low_memory': 'extended + float16 base + checkpointing'}
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
            ('feature cache: new layers + heads only', 'cache', 'full', f"{estimate['cache']:>10.3f}", ''),
            ('feature cache on disk (warm)', 'disk_cache', 'full', f"{estimate['cache']:>10.3f}", '  <= 0.55'),
            ('extended step / limit', 'extended', 'limit', f"{1.0:>10.3f}", '  <= 1.10'),
            ('activation checkpointing / extended', 'checkpoint', 'extended', f"{'':>10}", ''),
            ('float16 base / extended', 'half_base', 'extended', f"{'':>10}", ''),
            ('float16 base + checkpointing', 'low_memory', 'full', f"{'':>10}", ''),
            ('float16 base + checkpointing / extended', 'low_memory', 'extended', f"{'':>10}", '')]
    lines += ['', f"{'ratio vs full fine-tuning':<42}{'wall [min-max]':>20}{'cpu [min-max]':>20}"
                  f"{'FLOPs':>8}{'estimate':>10}  target"]
    for label, key, reference, estimate_text, target in rows:
        lines.append(f"{label:<42}{ratio(key, 'wall', reference):>20}{ratio(key, 'cpu', reference):>20}"
                     f"{ratio(key, 'gflop', reference)}{estimate_text}{target}")
    info = results['info']
    lines.append(f"disk feature cache: {100 * info['disk_cache_hit_rate']:.0f}% hits while timed, "
                 f"{info['disk_cache_bytes'] / 2**20:.1f} MiB on disk in {info['disk_cache_entries']} entries "
                 f"for {args.batch} examples "
                 f"({info['feature_bytes_per_token']} bytes per token)")
    if 'peak_bytes' in full:
        measured = [key for key in names if 'peak_bytes' in variants[key]]  # the training steps
        lines.append('')
        for key in (key for key in measured if key != 'full'):
            target = '  <= 0.50' if key in MEMORY_TARGETS else ''
            lines.append(f"{'peak memory: ' + names[key]:<62}"
                         f"{variants[key]['peak_bytes'] / full['peak_bytes']:>8.3f}{target}")
        lines += ['', 'peak memory = resident (weights, buffers, optimizer state) + peak allocated during the step:']
        for key in measured:
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
    common.write_results(args.out, 'bench_training', results, text)
    return results


if __name__ == '__main__':
    main()
