"""Generations of base and extended on the evaluate set (same seeds), their audio metrics and samples.

Used by the evaluate stage (`report.run_evaluation`); the metrics are `audio_metrics`' (Frechet
distance on encoder latents, chroma cosine) and AudioCraft's optional FAD / KLD / CLAP.
"""
import inspect
from pathlib import Path
import typing as tp

from audiocraft.data.audio import audio_write
from audiocraft.data.audio_utils import normalize_audio
from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition
from audiocraft.solvers import builders
import flashy
import omegaconf
import torch

from .audio_metrics import (FRECHET_LATENT_NAME, GaussianStats, build_optional_metric, check_optional_metrics,
                            encoder_latents, frechet_from_stats)
from .inputs import EvaluationInputs
from .lm_metrics import MODELS


def _audio_kwargs(cfg: omegaconf.DictConfig, function) -> dict:
    """`generate.audio.*` settings that `function` (audio_write / normalize_audio) accepts."""
    params = inspect.signature(function).parameters
    settings = omegaconf.OmegaConf.to_container(cfg.generate.audio, resolve=True)
    return {k: v for k, v in settings.items() if k in params and k not in ('format', 'sample_rate', 'wav')}


def _text_attributes(inputs: EvaluationInputs, prompts: tp.Sequence[str]):
    """Conditions for text prompts, as `MusicGen` builds them (no melody for melody models)."""
    attributes = [ConditioningAttributes(text={'description': prompt}) for prompt in prompts]
    if 'self_wav' in inputs.model.condition_provider.conditioners:
        for attr in attributes:
            attr.wav['self_wav'] = WavCondition(torch.zeros((1, 1, 1), device=inputs.device),
                                                torch.tensor([0], device=inputs.device),
                                                sample_rate=[inputs.cfg.sample_rate], path=[None])
    return attributes


def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


class AudioEvaluation:
    """Generates from base and extended on the evaluate set; scores and saves the generations."""
    def __init__(self, inputs: EvaluationInputs, scale: float):
        self.inputs = inputs
        self.cfg = inputs.cfg
        self.scale = scale
        out_dir = inputs.out_dir
        self.samples_dir = out_dir / 'samples'
        self.save_samples = bool(self.cfg.evaluate.get('samples', True))
        self.use_set_for_samples = self.save_samples and not list(self.cfg.evaluate.get('prompts') or [])
        self.frechet = bool(self.cfg.evaluate.get('audio_metrics', True))
        self.stats = {name: GaussianStats() for name in ('reference', 'reconstruction', *MODELS)}
        conditioners = inputs.model.condition_provider.conditioners
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
            with self.inputs.model.scaled(scale):
                gen = self.inputs.generate_step(batch, gen_duration=duration, **self.inputs.generation_params)
            out[model_name] = gen['gen_audio'].detach().float().cpu()
        return out

    def _write(self, model_name: str, stem: str, wav: torch.Tensor) -> Path:
        path = audio_write(self.samples_dir / model_name / stem, wav, self.cfg.sample_rate, format='wav',
                           **_audio_kwargs(self.cfg, audio_write))
        return Path(path)

    @torch.no_grad()
    def run(self) -> dict:
        inputs, cfg = self.inputs, self.cfg
        limit = cfg.evaluate.get('num_generations')
        normalize_kwargs = _audio_kwargs(cfg, normalize_audio)
        normalize_kwargs['sample_rate'] = cfg.sample_rate
        rank = flashy.distrib.rank()
        compression = inputs.compression_model
        seen = 0
        durations = []
        lp = inputs.with_progress('evaluate_generation', inputs.loader)
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
                tokens, scale = compression.encode(audio.to(inputs.device))
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
        if not flashy.distrib.is_rank_zero():
            return
        inputs = self.inputs
        batch_size = max(1, int(self.cfg.dataset.batch_size))
        seed = int(self.cfg.evaluate.get('seed', 0))
        total_len = int(round(duration * inputs.compression_model.frame_rate))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            for model_name in MODELS:
                torch.manual_seed(seed + start)
                scale = 0.0 if model_name == 'base' else self.scale
                with inputs.model.scaled(scale), inputs.autocast():
                    tokens = inputs.model.generate(None, _text_attributes(inputs, chunk), max_gen_len=total_len,
                                                   **inputs.generation_params)
                wavs = inputs.compression_model.decode(tokens, None).float().cpu()
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
