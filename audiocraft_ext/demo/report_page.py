"""The demo's listening report: `OUT/report/report.html`, built from `summary.json` and `metrics.json`.

One row per caption the demo generated from, grouped by domain: the base (extension_scale=0), the
extended model (1.0) and the dataset clip that carries that caption (its generate split). Being
built only from the two JSON files and the audio, `audiocraft-ext report OUT` rebuilds it.
"""
import json
from pathlib import Path
import typing as tp

from ..evaluation.html_report import Clip, PromptRow, ReportError, write_report
from ..evaluation.listening import REFERENCE, REPORT_DIR, report_config

GROUPS = {'new': 'new domain: what the new layers were trained on',
          'old': 'old domain: what the base knew (listen for forgetting)'}
LABELS = {'base': 'base (extension_scale=0)', 'extended': 'extended (extension_scale=1)'}


def _captioned_clips(data: Path, domain: str) -> tp.Dict[str, Path]:
    """caption -> audio file of the domain's generate split (the first file with that caption)."""
    clips: tp.Dict[str, Path] = {}
    for sidecar in sorted((data / 'audio' / domain / 'generate').glob('*.json')):
        audio = sidecar.with_suffix('.wav')
        description = json.loads(sidecar.read_text()).get('description')
        if audio.is_file() and description not in clips:
            clips[description] = audio
    return clips


def demo_rows(out: Path, summary: dict) -> tp.List[PromptRow]:
    duration = summary.get('clip_duration')
    rows: tp.Dict[tp.Tuple[str, str], PromptRow] = {}
    for domain in GROUPS:
        for variant in LABELS:
            for clip in summary['clips']:
                if (clip['domain'], clip['variant']) != (domain, variant):
                    continue
                key = (domain, clip['prompt'])
                row = rows.setdefault(key, PromptRow(clip['prompt'], [], group=GROUPS[domain]))
                # Paths relative to the output folder: the folder may have moved since.
                path = out / Path(clip['path']).relative_to(summary['out'])
                row.clips.append(Clip(LABELS[variant], path))
    data = Path(summary['data']) if summary.get('data') else None
    references = {domain: _captioned_clips(data, domain) for domain in GROUPS} if data and data.is_dir() else {}
    for (domain, caption), row in rows.items():
        reference = references.get(domain, {}).get(caption)
        if reference is not None:
            row.clips.append(Clip(REFERENCE, reference, duration=duration))
    return list(rows.values())


def write_demo_report(out: tp.Union[str, Path], summary: dict, metrics: dict,
                      audio_format: str = 'wav', folder: tp.Optional[tp.Union[str, Path]] = None) -> Path:
    """Write `out/report/` (or `folder`) for a demo run; returns the path of `report.html`."""
    out = Path(out)
    metrics = {key: value for key, value in metrics.items() if not key.startswith('_')}
    sizes = summary['sizes']
    plots = summary.get('plots') or {}
    config = report_config(metrics)
    for key in ('generate_lm', 'trainable_params', 'total_params'):  # the evaluation's samples (none here)
        config.pop(key, None)
    config.update({
        'base': summary['base']['reference'],
        'new layers (N)': sizes['new_layers'],
        'steps': f"{sizes['extension_epochs']} epochs x {sizes['extension_updates']} updates, lr {sizes['extension_lr']}",
        'trainable params': f"{summary['trainable_params']:,} of {summary['total_params']:,} "
                            f"({100 * summary['trainable_fraction']:.1f}%)",
        'training time': f"{summary['training_s']:.0f} s",
        'clips': {'seconds': summary.get('clip_duration'), 'seed': summary['seed'],
                  **(summary.get('generation_params') or {})},
        'demo data': summary.get('data'), 'demo sizes': sizes,
    })
    subtitle = ("A tiny MusicGen pretrained on Bach chorales (the old domain), new layers trained for minutes on "
                "Irish dance tunes (the new one), all music rendered from public-domain scores; each row's last clip "
                "is the dataset's.")
    audible = summary.get('audible')
    if audible:
        subtitle += (f" How new-domain the clips for new-domain captions sound, as a classifier of real clips scores "
                     f"them (log-odds of the new domain; {100 * audible['accuracy']:.0f}% right on held-out real clips, "
                     f"which score {audible['reference']['old']:+.1f} old and {audible['reference']['new']:+.1f} new): "
                     f"base {audible['new']['base']:+.1f}, extended {audible['new']['extended']:+.1f}.")
    return write_report(
        Path(folder) if folder is not None else out / REPORT_DIR,
        title=f"audiocraft-ext demo: a frozen base + {sizes['new_layers']} new layer(s)",
        subtitle=subtitle,
        rows=demo_rows(out, summary), metrics=metrics,
        plots={'cross entropy vs extension_scale': _local(out, summary, plots.get('scale_sweep')),
               'training and validation cross entropy per epoch': _local(out, summary, plots.get('loss_curves'))},
        config=config, audio_format=audio_format)


def _local(out: Path, summary: dict, path: tp.Optional[str]) -> tp.Optional[Path]:
    if not path:
        return None
    try:
        return out / Path(path).relative_to(summary['out'])
    except ValueError:
        return Path(path)


def rebuild_demo_report(out: Path, audio_format: str = 'wav', folder: tp.Optional[Path] = None) -> Path:
    """`audiocraft-ext report OUT` for a demo output folder."""
    try:
        summary = json.loads((out / 'summary.json').read_text())
        metrics = json.loads((out / 'metrics.json').read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"{out} is not a complete demo output ({error}): run audiocraft-ext demo again.") from None
    return write_demo_report(out, summary, metrics, audio_format, folder)
