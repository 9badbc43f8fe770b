"""The evaluation report as a text table (printed by `python -m audiocraft_ext.evaluate` and logged
by the evaluate stage)."""
from .audio_metrics import FRECHET_LATENT_NAME
from .lm_metrics import MODELS


def format_table(report: dict) -> str:
    """A readable text table of a report (printed by `python -m audiocraft_ext.evaluate`)."""
    lines = [f"Evaluation of XP {report['sig']} (epoch {report.get('epoch')}), "
             f"extension_scale {report.get('extension_scale')}",
             f"checkpoint: {report.get('checkpoint')}", '']
    header = f"{'set':<10} {'model':<9} {'ce':>8} {'ppl':>10}   ce per codebook"
    lines += [header, '-' * len(header)]
    for set_name, entry in report['sets'].items():
        for model_name in MODELS:
            s = entry[model_name]
            per = ' '.join(f'{v:.3f}' for v in s['ce_per_codebook'])
            lines.append(f"{set_name:<10} {model_name:<9} {s['ce']:>8.4f} {s['ppl']:>10.3f}   {per}")
        delta = entry['extended']['ce'] - entry['base']['ce']
        meaning = 'adaptation (< 0 is better)' if set_name == 'new' else 'forgetting (> 0 is worse)'
        lines.append(f"{'':<10} {'change':<9} {delta:>+8.4f} {'':>10}   {meaning}")
        lines.append(f"{'':<10} {'data':<9} {entry.get('dataset')}")
    sweep = report.get('scale_sweep', {})
    if sweep.get('scales'):
        lines += ['', 'extension_scale sweep (cross entropy):',
                  f"{'scale':<10} " + ' '.join(f'{s:>8.2f}' for s in sweep['scales'])]
        for set_name in ('new', 'reference'):
            if set_name in sweep:
                lines.append(f"{set_name:<10} " + ' '.join(f'{v:>8.4f}' for v in sweep[set_name]))
    audio = report.get('audio') or {}
    names = sorted({name for m in (*MODELS, 'reconstruction') for name in audio.get(m, {})})
    if names:
        lines += ['', f"audio: {audio.get('num_items')} generations of {audio.get('duration')} s per model",
                  f"{'metric':<34}{'base':>12} {'extended':>12} {'reconstruction':>15}"]
        for name in names:
            row = [audio.get(m, {}).get(name) for m in (*MODELS, 'reconstruction')]
            cells = [f'{v:>12.5g}' if v is not None else f"{'-':>12}" for v in row[:2]]
            cells.append(f'{row[2]:>15.5g}' if row[2] is not None else f"{'-':>15}")
            lines.append(f"{name:<34}" + ' '.join(cells))
        if FRECHET_LATENT_NAME in names:
            lines.append(f"({FRECHET_LATENT_NAME}: Frechet distance on the compression model's encoder "
                         "latents vs the reference audio; not FAD)")
    if report.get('samples_dir'):
        lines += ['', f"samples: {report['samples_dir']}"]
    if report.get('plots', {}).get('scale_sweep'):
        lines.append(f"plot: {report['plots']['scale_sweep']}")
    return '\n'.join(lines)
