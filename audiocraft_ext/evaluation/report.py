"""The evaluate stage of `ExtendedMusicGenSolver`: base vs extended on the same data, one report.

`run_evaluation(solver)` runs inside the solver's `evaluate` stage (best state swapped in) and
writes, under `<xp folder>/<evaluate.output_dir>` (default `evaluation/`):

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
import copy
import inspect
import json
import logging
from pathlib import Path
import typing as tp

import omegaconf
import torch

from .. import CONFIG_DIR
from ..io.atomic import atomic_write_text
from ..io.solver_checkpoints import read_solver_checkpoint
from .audio_metrics import (FRECHET_LATENT_NAME, GaussianStats, build_optional_metric, check_optional_metrics,
                            encoder_latents, frechet_from_stats)
from .listening import run_settings, write_evaluation_report
from .lm_metrics import cross_entropy_by_scale, extension_scale

logger = logging.getLogger(__name__)

MODELS = ('base', 'extended')


# ---- data ------------------------------------------------------------------------------------

def resolve_reference_dset(value: str, cfg: omegaconf.DictConfig) -> str:
    """`evaluate.reference_dset` -> a manifest path for AudioCraft's datasets.

    Accepts a manifest folder (holding data.jsonl or data.jsonl.gz) or file, an egs root (its
    `evaluate/` split is used, e.g. `egs/old`), or the name of a dset config (`audio/NAME`:
    its `datasource.evaluate`). Relative paths are relative to where the command started.
    """
    from dora import git_save
    path = Path(git_save.to_absolute_path(str(Path(str(value)).expanduser())))
    if path.is_file():
        return str(path)
    if path.is_dir():
        if (path / 'data.jsonl').exists() or (path / 'data.jsonl.gz').exists():
            return str(path)
        if (path / 'evaluate').is_dir():
            return resolve_reference_dset(str(path / 'evaluate'), cfg)
        raise FileNotFoundError(f"evaluate.reference_dset={value}: {path} holds neither data.jsonl nor an "
                                "evaluate/ split.")
    config = CONFIG_DIR / 'dset' / f'{value}.yaml'
    if config.exists():
        dset = omegaconf.OmegaConf.load(config)
        merged = omegaconf.OmegaConf.merge(cfg, dset)
        manifest = merged.datasource.get('evaluate')
        if manifest is None:
            raise ValueError(f"evaluate.reference_dset={value}: {config} sets no datasource.evaluate.")
        return git_save.to_absolute_path(str(manifest))
    raise FileNotFoundError(f"evaluate.reference_dset={value} is neither a manifest folder, an egs root, nor a "
                            f"dset config ({config} does not exist).")


def reference_loader(solver, manifest: str):
    """A loader over `manifest` built like the solver's evaluate loader (same dataset settings)."""
    from audiocraft.solvers import builders
    cfg = copy.deepcopy(solver.cfg)
    with omegaconf.open_dict(cfg):
        cfg.datasource = {'max_sample_rate': solver.cfg.datasource.max_sample_rate,
                          'max_channels': solver.cfg.datasource.max_channels, 'evaluate': manifest}
        cfg.execute_only = 'evaluate'
    return builders.get_audio_datasets(cfg, dataset_type=solver.DATASET_TYPE)['evaluate']


# ---- audio -----------------------------------------------------------------------------------

def _audio_kwargs(cfg: omegaconf.DictConfig, function) -> dict:
    """`generate.audio.*` settings that `function` (audio_write / normalize_audio) accepts."""
    params = inspect.signature(function).parameters
    settings = omegaconf.OmegaConf.to_container(cfg.generate.audio, resolve=True)
    return {k: v for k, v in settings.items() if k in params and k not in ('format', 'sample_rate', 'wav')}


def _text_attributes(solver, prompts: tp.Sequence[str]):
    """Conditions for text prompts, as `MusicGen` builds them (no melody for melody models)."""
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition
    attributes = [ConditioningAttributes(text={'description': prompt}) for prompt in prompts]
    if 'self_wav' in solver.model.condition_provider.conditioners:
        for attr in attributes:
            attr.wav['self_wav'] = WavCondition(torch.zeros((1, 1, 1), device=solver.device),
                                                torch.tensor([0], device=solver.device),
                                                sample_rate=[solver.cfg.sample_rate], path=[None])
    return attributes


def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


class AudioEvaluation:
    """Generates from base and extended on the evaluate set; scores and saves the generations."""
    def __init__(self, solver, out_dir: Path, scale: float):
        from audiocraft.solvers import builders
        self.solver = solver
        self.cfg = solver.cfg
        self.scale = scale
        self.out_dir = out_dir
        self.samples_dir = out_dir / 'samples'
        self.save_samples = bool(self.cfg.evaluate.get('samples', True))
        self.use_set_for_samples = self.save_samples and not list(self.cfg.evaluate.get('prompts') or [])
        self.frechet = bool(self.cfg.evaluate.get('audio_metrics', True))
        self.stats = {name: GaussianStats() for name in ('reference', 'reconstruction', *MODELS)}
        conditioners = solver.model.condition_provider.conditioners
        self.chroma = None
        if self.cfg.evaluate.metrics.get('chroma_cosine') or \
                (self.frechet and 'self_wav' in conditioners):
            self.chroma = {m: builders.get_chroma_cosine_similarity(self.cfg.metrics.chroma_cosine)
                           for m in MODELS}
        self.optional = {m: {name: build_optional_metric(name, self.cfg, out_dir / f'{name}_{m}')
                             for name in check_optional_metrics(self.cfg)} for m in MODELS}
        self.sample_entries: tp.List[dict] = []

    def _generate(self, batch, duration: float, seed: int) -> tp.Dict[str, torch.Tensor]:
        out = {}
        for model_name in MODELS:
            torch.manual_seed(seed)  # same draws for base and extended
            scale = 0.0 if model_name == 'base' else self.scale
            with extension_scale(self.solver.model, scale):
                gen = self.solver.run_generate_step(batch, gen_duration=duration, **self.solver.generation_params)
            out[model_name] = gen['gen_audio'].detach().float().cpu()
        return out

    def _write(self, model_name: str, stem: str, wav: torch.Tensor) -> Path:
        from audiocraft.data.audio import audio_write
        path = audio_write(self.samples_dir / model_name / stem, wav, self.cfg.sample_rate, format='wav',
                           **_audio_kwargs(self.cfg, audio_write))
        return Path(path)

    @torch.no_grad()
    def run(self) -> dict:
        import flashy
        from audiocraft.data.audio_utils import normalize_audio
        solver, cfg = self.solver, self.cfg
        loader = solver.dataloaders['evaluate']
        limit = cfg.evaluate.get('num_generations')
        normalize_kwargs = _audio_kwargs(cfg, normalize_audio)
        normalize_kwargs['sample_rate'] = cfg.sample_rate
        rank = flashy.distrib.rank()
        compression = solver.compression_model
        seen = 0
        durations = []
        lp = solver.log_progress('evaluate_generation', loader, total=len(loader), updates=solver.log_updates)
        for batch in lp:
            audio, meta = batch
            if limit is not None:
                if seen >= limit:
                    break
                audio, meta = audio[:limit - seen], meta[:limit - seen]
            length = audio.shape[-1]
            duration = cfg.evaluate.get('fixed_generation_duration') or length / cfg.sample_rate
            durations.append(duration)
            generations = self._generate((audio, meta), duration, seed=int(cfg.evaluate.get('seed', 0)) + seen)
            sizes = torch.tensor([m.n_frames for m in meta])
            sample_rates = torch.tensor([m.sample_rate for m in meta])
            if self.frechet:
                self.stats['reference'].update(encoder_latents(compression, audio, sizes))
                tokens, scale = compression.encode(audio.to(solver.device))
                reconstruction = compression.decode(tokens, scale).float().cpu()
                self.stats['reconstruction'].update(encoder_latents(compression, _fit_length(reconstruction, length), sizes))
            for model_name, wav in generations.items():
                wav = _fit_length(wav, length)
                if self.frechet:
                    self.stats[model_name].update(encoder_latents(compression, wav, sizes))
                normalized = torch.stack([normalize_audio(w, **normalize_kwargs) for w in wav])
                if self.chroma is not None:
                    self.chroma[model_name].update(normalized, audio.cpu(), sizes, sample_rates)
                for name, metric in self.optional[model_name].items():
                    if name == 'fad':
                        stems = [f'{Path(m.meta.path).stem}_{m.seek_time}' for m in meta]
                        metric.update(normalized, audio.cpu(), sizes, sample_rates, stems)
                    elif name == 'kld':
                        metric.update(normalized, audio.cpu(), sizes, sample_rates)
                    else:
                        metric.update(normalized, [m.description for m in meta], sizes, sample_rates)
                if self.use_set_for_samples:
                    for i, (m, w) in enumerate(zip(meta, wav)):
                        prefix = f'{seen + i:03d}' if rank == 0 else f'r{rank}_{seen + i:03d}'
                        stem = f'{prefix}_{Path(m.meta.path).stem}'
                        path = self._write(model_name, stem, w)
                        if model_name == 'base':
                            self.sample_entries.append({'name': path.name, 'description': m.description,
                                                        'reference': m.meta.path, 'seek_time': m.seek_time})
            seen += len(meta)

        if self.save_samples and not self.use_set_for_samples:
            self._generate_prompts(list(cfg.evaluate.prompts), durations[0] if durations else 5.0)
        return self._results(seen, durations)

    def _generate_prompts(self, prompts: tp.List[str], duration: float) -> None:
        import flashy
        if not flashy.distrib.is_rank_zero():
            return
        solver = self.solver
        batch_size = max(1, int(solver.cfg.dataset.batch_size))
        seed = int(self.cfg.evaluate.get('seed', 0))
        total_len = int(round(duration * solver.compression_model.frame_rate))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            for model_name in MODELS:
                torch.manual_seed(seed + start)
                scale = 0.0 if model_name == 'base' else self.scale
                with extension_scale(solver.model, scale), solver.autocast:
                    tokens = solver.model.generate(None, _text_attributes(solver, chunk), max_gen_len=total_len,
                                                   **solver.generation_params)
                wavs = solver.compression_model.decode(tokens, None).float().cpu()
                for i, (prompt, wav) in enumerate(zip(chunk, wavs)):
                    path = self._write(model_name, f'{start + i:03d}', wav)
                    if model_name == 'base':
                        self.sample_entries.append({'name': path.name, 'description': prompt})

    def _results(self, seen: int, durations: tp.List[float]) -> dict:
        results: dict = {'num_items': seen, 'duration': (sum(durations) / len(durations)) if durations else None}
        for model_name in MODELS:
            results[model_name] = {}
        if self.frechet and seen:
            for stats in self.stats.values():
                stats.all_reduce()
            reference = self.stats['reference']
            for model_name in (*MODELS, 'reconstruction'):
                results.setdefault(model_name, {})[FRECHET_LATENT_NAME] = frechet_from_stats(
                    self.stats[model_name], reference)
            results['latent_frames'] = int(reference.count)
        if self.chroma is not None and seen:
            for model_name in MODELS:
                results[model_name]['chroma_cosine'] = float(self.chroma[model_name].compute())
        for model_name in MODELS:
            for name, metric in self.optional[model_name].items():
                value = metric.compute()
                if isinstance(value, dict):
                    results[model_name].update({k: float(v) for k, v in value.items()})
                else:
                    results[model_name][name] = float(value)
        return results


# ---- report ----------------------------------------------------------------------------------

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


def run_evaluation(solver) -> tp.Dict[str, float]:
    """The evaluate stage: LM metrics for base and extended on the evaluate (and reference) set,
    the scale sweep, audio metrics and samples; writes the report. Returns flat metrics."""
    import flashy
    cfg = solver.cfg
    evaluate_cfg = cfg.evaluate
    check_optional_metrics(cfg)  # fail before any work when an enabled metric cannot run
    out_dir = Path(solver.folder) / str(evaluate_cfg.get('output_dir') or 'evaluation')
    configured = float(cfg.extended_model.extension_scale)
    sweep = [float(s) for s in (evaluate_cfg.get('scale_sweep') or [])]
    scales = [0.0, configured, *sweep]
    checkpoint = solver.checkpoint_path()
    if not checkpoint.exists() and cfg.continue_from:
        checkpoint = cfg.continue_from
    epoch = solver.epoch - 1 if cfg.execute_only else solver.epoch
    if epoch <= 0 and Path(str(checkpoint)).is_file():  # continue_from: a new XP without history
        epoch = len(read_solver_checkpoint(checkpoint).get('history') or [])
    report: dict = {
        # execute_only runs after the restored epochs: the last trained epoch is reported.
        'sig': solver.xp.sig, 'epoch': epoch, 'checkpoint': str(checkpoint),
        'base_model': solver.base_reference, 'base_hash': solver.base_hash,
        'extension_scale': configured, 'sets': {}, 'scale_sweep': {'scales': sweep},
    }
    sets = {'new': (str(cfg.datasource.evaluate), solver.dataloaders['evaluate'], None, 'manifest')}
    if evaluate_cfg.get('reference_dset'):
        manifest = resolve_reference_dset(evaluate_cfg.reference_dset, cfg)
        sets['reference'] = (manifest, reference_loader(solver, manifest), None, 'manifest')
    elif evaluate_cfg.get('generated_reference', True):  # no old data: the base's own held-out generations
        generations = solver.held_out_generations(int(cfg.dataset.batch_size))
        sets['reference'] = (generations.description, generations, generations.prepare, 'generations')
    for set_name, (dataset, loader, prepare, source) in sets.items():
        by_scale = cross_entropy_by_scale(solver, loader, scales, progress_name=f'evaluate_{set_name}',
                                          prepare=prepare)
        report['sets'][set_name] = {'base': by_scale[0.0], 'extended': by_scale[configured], 'dataset': dataset,
                                    'source': source}
        report['scale_sweep'][set_name] = [by_scale[s]['ce'] for s in sweep]

    audio = AudioEvaluation(solver, out_dir, configured)
    if audio.frechet or audio.save_samples or audio.chroma is not None or any(audio.optional['base']):
        report['audio'] = audio.run()
    else:
        report['audio'] = {}
    report['samples_dir'] = str(audio.samples_dir) if audio.save_samples else None
    report['run'] = run_settings(cfg, solver.model)
    report['plots'] = {}
    if flashy.distrib.is_rank_zero():
        if sweep:
            report['plots']['scale_sweep'] = str(plot_scale_sweep(report, out_dir / 'scale_sweep.png'))
        if audio.save_samples:
            atomic_write_text(audio.samples_dir / 'prompts.json',
                               json.dumps(audio.sample_entries, indent=2) + '\n')
        atomic_write_text(out_dir / 'metrics.json', json.dumps(report, indent=2) + '\n')
        solver.logger.info("Evaluation report: %s", out_dir / 'metrics.json')
        try:  # derived from the files above: a failure must not cost the run its checkpoint
            page = write_evaluation_report(out_dir, report, history=solver.history)
            solver.logger.info("Listening report: %s", page)
        except Exception as error:
            solver.logger.warning("The listening report could not be written (%s); rebuild it with "
                                  "`audiocraft-ext report %s`.", error, solver.folder)
        solver.logger.info("\n%s", format_table(report))
    flashy.distrib.barrier()
    return flat_metrics(report)


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
