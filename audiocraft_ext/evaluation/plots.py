"""The evaluation's plots as PNGs (matplotlib, Agg): loss curves from flashy's per-epoch history (a solver's
`history`, Dora's history.json), and cross entropy vs extension_scale from an evaluation report."""
from pathlib import Path
import typing as tp


def plot_loss_curves(histories: tp.Dict[str, tp.List[dict]], path: Path) -> Path:
    """Train and valid cross entropy per epoch, one panel per run (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = {name: history for name, history in histories.items() if history}
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(5 * max(1, len(runs)), 3.5), squeeze=False)
    for ax, (name, history) in zip(axes[0], runs.items()):
        for stage in ('train', 'valid'):
            points = [(epoch + 1, entry[stage]['ce']) for epoch, entry in enumerate(history)
                      if 'ce' in entry.get(stage, {})]
            if points:
                ax.plot(*zip(*points), marker='o', label=stage)
        ax.set_title(name)
        ax.set_xlabel('epoch')
        ax.set_ylabel('cross entropy')
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_scale_sweep(report: dict, path: Path) -> Path:
    """Cross entropy vs extension_scale on each set, as a PNG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    sweep = report['scale_sweep']
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {'new': 'new domain (adaptation)', 'reference': 'reference / old domain (forgetting)'}
    for name in ('new', 'reference'):
        if name in sweep:
            ax.plot(sweep['scales'], sweep[name], marker='o', label=labels[name])
    ax.axvline(report['extension_scale'], color='grey', linestyle=':', label='configured scale')
    ax.set_xlabel('extension_scale (0 = frozen base)')
    ax.set_ylabel('cross entropy (nats / token)')
    ax.set_title(f"XP {report['sig']}: base to extended")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

