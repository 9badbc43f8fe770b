"""The listening report of an evaluation: rows, plots and configuration from its folder.

`write_evaluation_report(eval_dir)` reads what the evaluate stage left in `<xp>/evaluation/`
(`metrics.json`, `samples/prompts.json`, `samples/<variant>/*.wav`, `scale_sweep.png`) and the
XP's `history.json`, and writes `<xp>/evaluation/report/report.html` with `html_report`. The
evaluate stage calls it after writing `metrics.json`; `audiocraft-ext report` calls it again on
an existing run, so both give the same page.

Columns: `base` (extension_scale=0), any other variant folder under `samples/` (e.g. samples
at intermediate scales), `extended`, and the reference clip (the segment of the dataset file
the item was read from) when the file is still there.
"""
import json
from pathlib import Path
import tempfile
import typing as tp

from .html_report import REPORT_FILE, Clip, PromptRow, ReportError, write_report
from .plots import plot_loss_curves

REPORT_DIR = 'report'
REFERENCE = 'reference clip'


def run_settings(cfg, lm) -> dict:
    """What the report's configuration block shows about a run (stored in metrics.json as `run`).

    Args:
        cfg (DictConfig): the solver's config.
        lm (ExtendedLMModel): the trained model, for its parameter counts.
    """
    from omegaconf import OmegaConf
    trainable, total = lm.parameter_counts()
    datasource = OmegaConf.to_container(cfg.datasource, resolve=True)
    return {
        'num_additional_layers': int(cfg.extended_model.num_additional_layers),
        'num_base_layers': int(lm.num_base_layers),
        'trainable_params': trainable, 'total_params': total,
        'epochs': int(cfg.optim.epochs), 'updates_per_epoch': int(cfg.optim.updates_per_epoch),
        'lr': float(cfg.optim.lr), 'batch_size': int(cfg.dataset.batch_size),
        'segment_duration': cfg.dataset.segment_duration, 'seed': int(cfg.seed),
        'sample_rate': int(cfg.sample_rate),
        'data': {split: value for split, value in datasource.items() if split in ('train', 'valid', 'evaluate')},
        'reference_dset': cfg.evaluate.get('reference_dset'),
        'generate_lm': OmegaConf.to_container(cfg.generate.lm, resolve=True),  # the samples' settings
    }


def listening_page(eval_dir: tp.Union[str, Path]) -> Path:
    """Where the listening report of an evaluation folder is."""
    return Path(eval_dir) / REPORT_DIR / REPORT_FILE


def report_config(metrics: dict) -> dict:
    """The configuration block: base reference and hash, N, steps, data, ... from a report."""
    run = dict(metrics.get('run') or {})
    steps = None
    if 'epochs' in run and 'updates_per_epoch' in run:
        steps = f"{metrics.get('epoch')} of {run['epochs']} epochs x {run['updates_per_epoch']} updates"
    return {
        'xp': metrics.get('sig'), 'checkpoint': metrics.get('checkpoint'),
        'base': metrics.get('base_model'), 'base hash': metrics.get('base_hash'),
        'new layers (N)': run.pop('num_additional_layers', None), 'steps': steps,
        'extension_scale': metrics.get('extension_scale'), **run,
    }


def _variant_label(name: str, metrics: dict) -> str:
    if name == 'base':
        return 'base (extension_scale=0)'
    if name == 'extended':
        return f"extended (extension_scale={metrics.get('extension_scale', 1.0):g})"
    return name.replace('_', ' ')


def _variants(samples: Path) -> tp.List[str]:
    """Variant folders under `samples`: base first, extended last, others (sorted) between."""
    names = sorted(p.name for p in samples.iterdir() if p.is_dir())
    middle = [n for n in names if n not in ('base', 'extended')]
    return [n for n in ('base', *middle, 'extended') if n in names]


def evaluation_rows(eval_dir: Path, metrics: dict) -> tp.List[PromptRow]:
    """One row per entry of `samples/prompts.json`: a clip per variant, then the reference clip."""
    samples = Path(eval_dir) / 'samples'
    listing = samples / 'prompts.json'
    if not listing.is_file():
        return []
    import soundfile
    variants = _variants(samples)
    rows = []
    for entry in json.loads(listing.read_text()):
        clips = [Clip(_variant_label(v, metrics), samples / v / entry['name'])
                 for v in variants if (samples / v / entry['name']).is_file()]
        note = ''
        reference = entry.get('reference')
        if reference and clips:
            if Path(reference).is_file():
                duration = soundfile.info(str(clips[0].path)).duration
                clips.append(Clip(REFERENCE, Path(reference), start=float(entry.get('seek_time') or 0.0),
                                  duration=duration))
            else:
                note = f"reference audio no longer at {reference}"
        rows.append(PromptRow(entry['description'], clips, note=note))
    return rows


def write_evaluation_report(eval_dir: tp.Union[str, Path], metrics: tp.Optional[dict] = None,
                            history: tp.Optional[tp.List[dict]] = None,
                            out: tp.Optional[tp.Union[str, Path]] = None, audio_format: str = 'wav') -> Path:
    """Write the listening report of an evaluation folder; returns the path of `report.html`.

    Args:
        eval_dir: the evaluation folder (`<xp>/evaluation`).
        metrics: its report; read from `eval_dir/metrics.json` when not given.
        history: flashy's per-epoch history for the loss curves; read from the XP's
            `history.json` (the folder above `eval_dir`) when not given.
        out: the report folder (default `eval_dir/report`).
        audio_format: 'wav' or 'mp3'.
    """
    eval_dir = Path(eval_dir)
    if metrics is None:
        metrics = read_metrics(eval_dir)
    if history is None:
        history_file = eval_dir.parent / 'history.json'
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        loss_curves = None
        if history:
            loss_curves = plot_loss_curves({f"XP {metrics.get('sig')}": history}, Path(tmp) / 'loss_curves.png')
        plots = {'cross entropy vs extension_scale': eval_dir / 'scale_sweep.png',
                 'training and validation cross entropy per epoch': loss_curves}
        return write_report(
            Path(out) if out is not None else eval_dir / REPORT_DIR,
            title=f"Listening report: XP {metrics.get('sig')}",
            subtitle=f"Frozen base vs base + new layers, epoch {metrics.get('epoch')}",
            rows=evaluation_rows(eval_dir, metrics), metrics=metrics, plots=plots,
            config=report_config(metrics), audio_format=audio_format)


def read_metrics(eval_dir: Path) -> dict:
    path = Path(eval_dir) / 'metrics.json'
    if not path.is_file():
        raise ReportError(f"{eval_dir} has no metrics.json: evaluate the run first "
                          "(python -m audiocraft_ext.evaluate sig=SIG).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not valid JSON ({error}): rerun the evaluation to write it again.") from None
