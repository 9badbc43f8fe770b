"""Loss curves as a PNG, from flashy's per-epoch history (a solver's `history`, Dora's history.json)."""
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
