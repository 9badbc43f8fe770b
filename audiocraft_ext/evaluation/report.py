"""The evaluate stage of `ExtendedMusicGenSolver`: base vs extended on the same data, one report.

`run_evaluation(inputs)` runs inside the solver's `evaluate` stage (best state swapped in), from
the `EvaluationInputs` the solver hands it, and writes, under `<xp folder>/<evaluate.output_dir>`
(default `evaluation/`):

    metrics.json       the report (schema below, docs/EVALUATION.md)
    scale_sweep.png    cross entropy vs extension_scale on the new-domain and reference sets
    samples/base/*.wav, samples/extended/*.wav, samples/prompts.json
    report/report.html the listening report (`listening`), with its audio, spectrograms and plots

Report schema (keys other tools read; more may be added):

    {"sig": str, "epoch": int, "checkpoint": str, "extension_scale": float,
     "sets": {"new": {"base": S, "extended": S, "dataset": str, "source": "manifest"},
              "reference": {...same; source "manifest" (evaluate.reference_dset) or "generations"
                            (no reference_dset: the held-out part of the base's own generations)}},
     "scale_sweep": {"scales": [...], "new": [ce, ...], "reference": [ce, ...]},
     "audio": {"base": {metric: value}, "extended": {...}, "reconstruction": {...}, ...},
     "samples_dir": str, "plots": {"scale_sweep": str},
     "run": {"num_additional_layers": int, "epochs": int, "data": {...}, ...}}
    S = {"ce": float, "ppl": float, "ce_per_codebook": [...], "ppl_per_codebook": [...],
         "tokens_per_codebook": [...]}
"""
import json
import typing as tp

import flashy

from ..io.atomic import atomic_write_text
from .audio_evaluation import AudioEvaluation
from .inputs import EvaluationInputs
from .audio_metrics import FRECHET_LATENT_NAME, check_optional_metrics
from .listening import run_settings, write_evaluation_report
from .lm_metrics import MODELS, cross_entropy_by_scale
from .plots import plot_scale_sweep
from .reference_sets import resolve_reference_dset
from .report_table import format_table


def flat_metrics(report: dict) -> tp.Dict[str, float]:
    """Scalars for the solver's logs and history: extended ones under AudioCraft's names."""
    metrics: tp.Dict[str, float] = {}
    for set_name, prefix in (('new', ''), ('reference', 'ref_')):
        if set_name not in report['sets']:
            continue
        entry = report['sets'][set_name]
        metrics[f'{prefix}ce'] = entry['extended']['ce']
        metrics[f'{prefix}ppl'] = entry['extended']['ppl']
        metrics[f'{prefix}base_ce'] = entry['base']['ce']
        metrics[f'{prefix}base_ppl'] = entry['base']['ppl']
        if not prefix:
            for k, value in enumerate(entry['extended']['ce_per_codebook']):
                metrics[f'ce_q{k + 1}'] = value
                metrics[f'ppl_q{k + 1}'] = entry['extended']['ppl_per_codebook'][k]
    for model_name in MODELS:
        for name, value in report.get('audio', {}).get(model_name, {}).items():
            short = 'fld' if name == FRECHET_LATENT_NAME else name
            metrics[f'{short}_{model_name}'] = value
    return metrics


def run_evaluation(inputs: EvaluationInputs) -> tp.Dict[str, float]:
    """The evaluate stage: LM metrics for base and extended on the evaluate (and reference) set,
    the scale sweep, audio metrics and samples; writes the report. Returns flat metrics."""
    cfg, model, run = inputs.cfg, inputs.model, inputs.run
    evaluate_cfg = cfg.evaluate
    check_optional_metrics(cfg)  # fail before any work when an enabled metric cannot run
    out_dir = inputs.out_dir
    configured = float(cfg.extended_model.extension_scale)
    sweep = [float(s) for s in (evaluate_cfg.get('scale_sweep') or [])]
    scales = [0.0, configured, *sweep]
    report: dict = {
        'sig': run.sig, 'epoch': run.epoch, 'checkpoint': run.checkpoint,
        'base_model': run.base_reference, 'base_hash': run.base_hash,
        'extension_scale': configured, 'sets': {}, 'scale_sweep': {'scales': sweep},
    }
    sets = {'new': (str(cfg.datasource.evaluate), inputs.loader, inputs.prepare, 'manifest')}
    if evaluate_cfg.get('reference_dset'):
        manifest = resolve_reference_dset(evaluate_cfg.reference_dset, cfg)
        sets['reference'] = (manifest, inputs.reference_loader(manifest), inputs.prepare, 'manifest')
    elif evaluate_cfg.get('generated_reference', True):  # no old data: the base's own held-out generations
        generations = inputs.held_out(int(cfg.dataset.batch_size))
        sets['reference'] = (generations.description, generations, generations.prepare, 'generations')
    for set_name, (dataset, loader, prepare, source) in sets.items():
        by_scale = cross_entropy_by_scale(model, inputs.with_progress(f'evaluate_{set_name}', loader), scales,
                                          prepare, inputs.autocast)
        report['sets'][set_name] = {'base': by_scale[0.0], 'extended': by_scale[configured], 'dataset': dataset,
                                    'source': source}
        report['scale_sweep'][set_name] = [by_scale[s]['ce'] for s in sweep]

    audio = AudioEvaluation(inputs, configured)
    if audio.frechet or audio.save_samples or audio.chroma is not None or any(audio.optional['base']):
        report['audio'] = audio.run()
    else:
        report['audio'] = {}
    report['samples_dir'] = str(audio.samples_dir) if audio.save_samples else None
    report['run'] = run_settings(cfg, model)
    report['plots'] = {}
    logger = inputs.logger
    if flashy.distrib.is_rank_zero():
        if sweep:
            report['plots']['scale_sweep'] = str(plot_scale_sweep(report, out_dir / 'scale_sweep.png'))
        if audio.save_samples:
            atomic_write_text(audio.samples_dir / 'prompts.json',
                               json.dumps(audio.sample_entries, indent=2) + '\n')
        atomic_write_text(out_dir / 'metrics.json', json.dumps(report, indent=2) + '\n')
        logger.info("Evaluation report: %s", out_dir / 'metrics.json')
        try:  # derived from the files above: a failure must not cost the run its checkpoint
            page = write_evaluation_report(out_dir, report, history=run.history)
            logger.info("Listening report: %s", page)
        except Exception as error:
            logger.warning("The listening report could not be written (%s); rebuild it with "
                           "`audiocraft-ext report %s`.", error, run.folder)
        logger.info("\n%s", format_table(report))
    flashy.distrib.barrier()
    return flat_metrics(report)
