"""Scaling: training step time, peak memory and generation time vs the number of new layers N
(0, L/4, L/2, L) and vs sequence length, measured in one run on one base; writes a table, a JSON
file and a plot (PNG) to the output folder.

Training steps are the ones of bench_training.py (compute_predictions -> MusicGenSolver's masked
cross entropy -> backward -> clipping -> AdamW). N = 0 has nothing to train: its row is the floor
of the design, the no-grad forward of the frozen base. Full fine-tuning of the base is the
reference. Generation at N = 0 is the base MusicGen.

    python benchmarks/bench_scaling.py                     # CPU: dim 256, L = 8
    python benchmarks/bench_scaling.py --device cuda --dim 1024 --layers 24 --heads 16 \
        --batch 8 --steps 500 1000 1500 3000 --durations 5 10 20 30
"""
import argparse
import statistics
import typing as tp

import torch

import common


def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--layers', type=int, default=8)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--card', type=int, default=2048)
    parser.add_argument('--n-q', type=int, default=4)
    parser.add_argument('--batch', type=int, default=4, help='training batch size')
    parser.add_argument('--steps', type=int, nargs='+', default=[50, 100, 200],
                        help='training sequence lengths (time steps); the N sweep uses the second')
    parser.add_argument('--gen-batch', type=int, default=2)
    parser.add_argument('--durations', type=float, nargs='+', default=[0.5, 1.0, 2.0],
                        help='generated seconds (50 steps/s); the N sweep uses the second')
    parser.add_argument('--repeats', type=int, default=3, help='rounds of the training sweeps')
    parser.add_argument('--gen-repeats', type=int, default=5, help='rounds of the generation sweeps')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (see bench_training.py)')
    parser.add_argument('--out', default=str(common.DEFAULT_OUT))
    return parser.parse_args(argv)


def new_layer_counts(layers: int) -> tp.List[int]:
    return sorted({0, max(1, layers // 4), max(1, layers // 2), layers})


def training_sweeps(args, base) -> tp.Dict[str, tp.Any]:
    """Step time and peak memory vs N (at steps[1]) and vs sequence length (full and N = L/2)."""
    counts = new_layer_counts(args.layers)
    half = max(1, args.layers // 2)
    steps_n = args.steps[min(1, len(args.steps) - 1)]
    batch = common.random_batch(args.batch, args.n_q, steps_n, args.card, args.device)

    by_n: tp.Dict[str, tp.Callable[[], tp.Any]] = {'full': common.TrainingStep(common.full_finetuning_lm(base.lm),
                                                                              batch, args.device)}
    floor_lm = common.extended_lm(base.lm, 1)
    x, kwargs, _ = common.capture_base_io(floor_lm, batch, args.device)

    def base_forward():
        with torch.no_grad(), common.autocast_context(args.device):
            floor_lm.base_transformer(x, **kwargs)

    for n in counts:
        by_n[f'N={n}'] = base_forward if n == 0 else \
            common.TrainingStep(common.extended_lm(base.lm, n), batch, args.device)
    times = common.run_alternating(by_n, args.repeats, args.device)
    clock = _clock(args)
    vs_n = {name: {'time': common.median_and_spread(times[name][clock])[0],
                   'vs_full': _paired(times[name][clock], times['full'][clock])} for name in by_n}
    for name, step in by_n.items():
        if isinstance(step, common.TrainingStep):
            vs_n[name]['peak_bytes'] = step.resident_bytes() + common.peak_step_bytes(step, args.device)
    del by_n

    vs_steps: tp.Dict[str, tp.Dict[int, float]] = {'full': {}, f'N={half}': {}, 'ratio': {}}
    seq_steps: tp.Dict[str, tp.Callable[[], tp.Any]] = {}
    full_lm, ext_lm = common.full_finetuning_lm(base.lm), common.extended_lm(base.lm, half)
    for length in args.steps:
        batch = common.random_batch(args.batch, args.n_q, length, args.card, args.device)
        seq_steps[f'full@{length}'] = common.TrainingStep(full_lm, batch, args.device)
        seq_steps[f'N={half}@{length}'] = common.TrainingStep(ext_lm, batch, args.device)
    times = common.run_alternating(seq_steps, args.repeats, args.device)
    for name in seq_steps:
        variant, length = name.split('@')
        vs_steps[variant][int(length)] = common.median_and_spread(times[name][clock])[0]
    for length in args.steps:
        vs_steps['ratio'][length] = _paired(times[f'N={half}@{length}'][clock], times[f'full@{length}'][clock])
    return {'counts': counts, 'steps_for_n': steps_n, 'vs_n': vs_n, 'vs_steps': vs_steps}


def generation_sweeps(args, base) -> tp.Dict[str, tp.Any]:
    """Seconds to generate (tokens only, no decoding) vs N and vs duration (base and N = L/2);
    CPU time of this process on CPU, wall time on GPU."""
    from audiocraft_ext import ExtendedMusicGen
    counts = new_layer_counts(args.layers)
    half = max(1, args.layers // 2)
    models = {f'N={n}': base if n == 0 else ExtendedMusicGen.from_base(base, n) for n in counts}
    prompts = ['calm piano'] * args.gen_batch
    duration_n = args.durations[min(1, len(args.durations) - 1)]

    def seconds(model, duration):
        wall, cpu = common.timed(lambda: common.generate_tokens(model, prompts, duration), args.device)
        return cpu if _clock(args) == 'cpu' else wall

    runs = {name: (model, duration_n) for name, model in models.items()}
    runs.update({f'{name}@{duration}': (models[name], duration)
                 for name in ('N=0', f'N={half}') for duration in args.durations if duration != duration_n})
    for model in models.values():  # warm-up
        common.generate_tokens(model, prompts, 0.2)
    results: tp.Dict[str, tp.List[float]] = {name: [] for name in runs}
    for _ in range(args.gen_repeats):
        for name, (model, duration) in runs.items():
            results[name].append(seconds(model, duration))
    median = {name: common.median_and_spread(values)[0] for name, values in results.items()}
    # Slowdown vs the base, paired within each round (steadier than a ratio of medians).
    slowdown = {f'N={n}': _paired(results[f'N={n}'], results['N=0']) for n in counts}
    vs_duration: tp.Dict[str, tp.Dict[float, float]] = {}
    for name in ('N=0', f'N={half}'):
        vs_duration[name] = {duration: median[name if duration == duration_n else f'{name}@{duration}']
                             for duration in args.durations}
    return {'duration_for_n': duration_n, 'vs_n': {f'N={n}': median[f'N={n}'] for n in counts},
            'slowdown_vs_n': slowdown, 'vs_duration': vs_duration}


def _paired(values: tp.Sequence[float], reference: tp.Sequence[float]) -> float:
    """Median over rounds of values / reference within a round (steadier than a ratio of medians)."""
    return statistics.median(a / b for a, b in zip(values, reference))


def _clock(args) -> str:
    return 'cpu' if args.device == 'cpu' else 'wall'


def report(args, training, generation, machine: str) -> str:
    layers = args.layers
    full = training['vs_n']['full']
    lines = [f"device={args.device} dim={args.dim} L={layers} heads={args.heads} card={args.card} K={args.n_q} "
             f"batch={args.batch} repeats={args.repeats} ({_clock(args)} time, medians; ratios: median of the "
             "per-round ratio)",
             f"machine: {machine}", '',
             f"training step vs N (seq {training['steps_for_n']}), full fine-tuning: {full['time']:.3f} s, "
             f"{full['peak_bytes'] / 2**20:.0f} MiB",
             f"{'N':>4}{'step s':>9}{'vs full':>9}{'estimate':>10}{'peak MiB':>10}{'vs full':>9}"]
    for n in training['counts']:
        entry = training['vs_n'][f'N={n}']
        estimate = (layers + 3 * n) / (3 * layers)
        memory = (f"{entry['peak_bytes'] / 2**20:>10.0f}{entry['peak_bytes'] / full['peak_bytes']:>9.3f}"
                  if 'peak_bytes' in entry else f"{'(no-grad base forward only)':>30}")
        lines.append(f"{n:>4}{entry['time']:>9.3f}{entry['vs_full']:>9.3f}{estimate:>10.3f}{memory}")
    half = max(1, layers // 2)
    lines += ['', "training step vs sequence length (s)", f"{'steps':>6}{'full':>9}{f'N={half}':>9}{'ratio':>8}"]
    for length, value in training['vs_steps']['full'].items():
        extended = training['vs_steps'][f'N={half}'][length]
        lines.append(f"{length:>6}{value:>9.3f}{extended:>9.3f}{training['vs_steps']['ratio'][length]:>8.3f}")
    lines += ['', f"generation vs N ({generation['duration_for_n']} s, batch {args.gen_batch}, {_clock(args)} time, "
                  f"{args.gen_repeats} rounds; vs base: median of the per-round ratio)",
              f"{'N':>4}{'seconds':>9}{'vs base':>9}{'(L+N)/L':>9}"]
    for n in training['counts']:
        value, slowdown = generation['vs_n'][f'N={n}'], generation['slowdown_vs_n'][f'N={n}']
        lines.append(f"{n:>4}{value:>9.3f}{slowdown:>9.3f}{(layers + n) / layers:>9.3f}")
    lines += ['', 'generation vs duration (s)', f"{'dur s':>6}{'base':>9}{f'N={half}':>9}{'ratio':>8}"]
    for duration, value in generation['vs_duration']['N=0'].items():
        extended = generation['vs_duration'][f'N={half}'][duration]
        lines.append(f"{duration:>6}{value:>9.3f}{extended:>9.3f}{extended / value:>8.3f}")
    return '\n'.join(lines)


def plot(args, training, generation, path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    layers, half = args.layers, max(1, args.layers // 2)
    counts = training['counts']
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    times = [training['vs_n'][f'N={n}']['time'] for n in counts]
    full = training['vs_n']['full']['time']
    ax.plot(counts, times, 'o-', label='extended (N = 0: no-grad base forward)')
    ax.plot(counts, [full * (layers + 3 * n) / (3 * layers) for n in counts], '--',
            label='estimate (L + 3N) / 3L x full')
    ax.axhline(full, color='gray', linestyle=':', label='full fine-tuning (L layers)')
    ax.set(xlabel='new layers N', ylabel=f'{_clock(args)} s / step', xticks=counts,
           title=f"training step vs N (seq {training['steps_for_n']})")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    lengths = sorted(training['vs_steps']['full'])
    for name, label in (('full', 'full fine-tuning'), (f'N={half}', f'extended N = {half}')):
        ax.plot(lengths, [training['vs_steps'][name][s] for s in lengths], 'o-', label=label)
    ax.set(xlabel='sequence length (steps)', ylabel=f'{_clock(args)} s / step', xticks=lengths,
           title='training step vs sequence length')
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    base = generation['vs_n']['N=0']
    ax.plot(counts, [generation['vs_n'][f'N={n}'] for n in counts], 'o-', label='measured')
    ax.plot(counts, [base * (layers + n) / layers for n in counts], '--', label='limit (L + N) / L x base')
    ax.set(xlabel='new layers N', ylabel=f'{_clock(args)} s', xticks=counts,
           title=f"generation of {generation['duration_for_n']} s vs N (batch {args.gen_batch})")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    durations = sorted(generation['vs_duration']['N=0'])
    for name, label in (('N=0', 'base'), (f'N={half}', f'extended N = {half}')):
        ax.plot(durations, [generation['vs_duration'][name][d] for d in durations], 'o-', label=label)
    ax.set(xlabel='generated audio (s)', ylabel=f'{_clock(args)} s', xticks=durations,
           title='generation time vs duration')
    ax.legend(fontsize=8)
    fig.suptitle(f"device={args.device} dim={args.dim} L={layers} heads={args.heads} card={args.card} "
                 f"batch={args.batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.Dict[str, tp.Any]:
    args = parse_args(argv)
    if args.threads and args.device == 'cpu':
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = common.build_base(args.dim, args.layers, args.heads, args.card, args.n_q, args.device)
    training = training_sweeps(args, base)
    generation = generation_sweeps(args, base)
    machine = common.machine_description(args.device)
    text = report(args, training, generation, machine)
    print(text)
    results = {'config': vars(args), 'machine': machine, 'training': training, 'generation': generation}
    out = common.write_results(args.out, 'bench_scaling', results, text)
    plot(args, training, generation, out / 'scaling.png')
    print(f"plot: {out / 'scaling.png'}")
    return results


if __name__ == '__main__':
    main()
