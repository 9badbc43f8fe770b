"""Table and trade-off plot of `bench_adaptation.py`."""
from pathlib import Path

LEVELS = (0.02, 0.05)


def format_report(report: dict) -> str:
    info, methods = report['info'], report['methods']
    sizes, model = info['sizes'], info['base_model']
    clips = model['clips']['new']
    base = info['base']
    lines = [
        f"command: {info['command']}",
        f"machine: {info['machine']}; load average before timing {info['load_before_timing'][0]:.1f}, "
        f"after {info['load_after'][0]:.1f}; {info['workers']} training processes; total {info['wall_s'] / 60:.1f} min",
        f"task: the pretrained base of {model['folder']} (dim {model['dim']}, {model['layers']} layers, "
        f"{model['heads']} heads, {model['codebooks']} codebooks of {model['card']}; base_lm sha256 "
        f"{model['base_lm_sha256'][:12]}); score set clips of {sizes['duration']:g} s, per domain {clips['train']} "
        f"training, {clips['valid']} validation, {clips['evaluate']} held out; {info['replay_set']['heldout']} of the "
        f"base's {info['replay_set']['train'] + info['replay_set']['heldout']} generations held out",
        f"runs: {info['steps']} optimizer steps of {info['batch_size']} new-domain examples (+ replay), "
        f"{info['seeds']} seeds, learning rate chosen on new-domain validation (seed 0)",
        f"base cross entropy (nats/token): new {base['new']:.4f}, old {base['old']:.4f}, "
        f"own generations {base['generated']:.4f}",
        '',
        'gain = CE_base(new) - CE(new), forgetting = CE(old) - CE_base(old), held-out clips, mean over seeds;',
        'gain@f: largest gain on the trade-off curve (strength 0..1) at forgetting <= f; fgt(gen): forgetting on the '
        "base's own held-out generations",
        '',
    ]
    header = (f"{'method':<38} {'trainable':>10} {'step s':>7} {'x full':>6} {'peak MiB':>8} {'lr':>7} "
              f"{'gain':>7} {'forget':>7} {'fgt(gen)':>8} {'gain@.02':>8} {'gain@.05':>8}")
    lines += [header, '-' * len(header)]
    for name, result in methods.items():
        timing = result.get('timing') or {}
        lines.append(
            f"{result['label']:<38} {timing.get('trainable', 0):>10,} {timing.get('cpu_s', float('nan')):>7.3f} "
            f"{timing.get('ratio_full', float('nan')):>6.2f} {timing.get('peak_bytes', 0) / 2 ** 20:>8.1f} "
            f"{result['lr']:>7.0e} {result['gain']:>7.4f} {result['forgetting']:>+7.4f} "
            f"{result['forgetting_generated']:>+8.4f} {result['gain@0.02']:>8.4f} {result['gain@0.05']:>8.4f}")
    lines += ['', 'per seed (gain / forgetting / gain@.02 / gain@.05):']
    for name, result in methods.items():
        cells = '   '.join(f"s{s['seed']}: {s['gain']:.4f} / {s['forgetting']:+.4f} / {s['gain@0.02']:.4f} / "
                           f"{s['gain@0.05']:.4f}" for s in result['seeds'])
        lines.append(f"  {result['label']:<38} {cells}")
    lines += ['', 'learning-rate grid (new-domain validation CE, seed 0):']
    for name, result in methods.items():
        lines.append(f"  {result['label']:<38} " + '  '.join(f"{float(lr):.0e}: {ce:.4f}"
                                                          for lr, ce in result['grid'].items()))
    lines += ['', 'step time: median CPU seconds of one step (one thread), ratio to full fine-tuning = median over '
              'interleaved rounds [min-max]:']
    for name, result in methods.items():
        timing = result.get('timing') or {}
        if timing:
            low, high = timing['ratio_range']
            lines.append(f"  {result['label']:<38} {timing['cpu_s']:.3f} s (spread {100 * timing['spread']:.0f}%, "
                         f"wall {timing['wall_s']:.3f} s)  {timing['ratio_full']:.2f} [{low:.2f}-{high:.2f}]")
    return '\n'.join(lines)


def plot_curves(report: dict, path: Path) -> Path:
    """One PNG, two panels: the baselines with ours, and our variants (forgetting on x, gain on y)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    methods = report['methods']
    controlled = [n for n, r in methods.items() if r['method']['replay']]
    plain = [n for n in methods if n not in controlled]
    panels = [('without forgetting control', plain), ('with replay / distillation (LoRA dashed)', controlled)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), sharey=True)
    colours = plt.get_cmap('tab20').colors
    for ax, (title, names) in zip(axes, panels):
        ax.set_prop_cycle(color=colours)
        for name in names:
            curve = methods[name]['curve']
            style = '-' if methods[name]['method']['family'].startswith('extension') else '--'
            ax.plot([p[0] for p in curve], [p[1] for p in curve], style, marker='o', markersize=3,
                    label=methods[name]['label'])
        for level in LEVELS:
            ax.axvline(level, color='grey', linestyle=':', linewidth=1)
        ax.axvline(0.0, color='black', linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel('old-domain forgetting (nats/token, held-out)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel('new-domain gain (nats/token, held-out)')
    info = report['info']
    fig.suptitle(f"Trade-off curves (strength 0 -> 1: extension_scale / weight interpolation), mean of "
                 f"{info['seeds']} seeds, {info['steps']} steps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
