"""Audio metrics of generations that run offline, and checks for AudioCraft's downloadable ones.

`frechet_encodec_latent_distance`: the Fréchet distance between two Gaussians fitted to
frame-level embeddings of generated and of reference audio, the embeddings being the frozen
compression model's *encoder latents* (EnCodec's continuous output before quantisation, one
vector per frame, e.g. 50 frames/s). Same formula as FAD, **not FAD**: FAD uses VGGish
embeddings of a network trained for audio classification; these latents are trained for
reconstruction, so the numbers are not comparable with published FAD values, only between
models that share a compression model (base and extended always do).

Statistics are kept as sums (count, sum x, sum x x^T) so that they add up over batches and
distributed workers.
"""
import importlib.util
import math
from pathlib import Path
import typing as tp

import numpy as np
import torch

FRECHET_LATENT_NAME = 'frechet_encodec_latent_distance'


def _inner_encodec(compression_model):
    """The EnCodec model with `encoder` under AudioCraft's wrappers (stereo interleaving, ...)."""
    model = compression_model
    while not hasattr(model, 'encoder') and hasattr(model, 'model'):
        model = model.model
    if not (hasattr(model, 'encoder') and hasattr(model, 'preprocess')):
        raise TypeError(f"{type(compression_model).__name__} has no EnCodec encoder: "
                        f"{FRECHET_LATENT_NAME} needs AudioCraft's EncodecModel. Set evaluate.audio_metrics=false.")
    return model


@torch.no_grad()
def encoder_latents(compression_model, wav: torch.Tensor, sizes: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
    """Frame-level encoder latents of `wav` [B, C, T] -> [N_frames, D] (valid frames only).

    Channels the encoder does not take (a mono EnCodec under a stereo model) are folded into the
    batch: each channel's frames count as frames. `sizes` [B] are the valid lengths in samples.
    """
    model = _inner_encodec(compression_model)
    B, C, T = wav.shape
    if C != model.channels:
        if model.channels != 1:
            raise ValueError(f"Audio has {C} channels, the compression model's encoder {model.channels}.")
        wav = wav.reshape(B * C, 1, T)
        sizes = None if sizes is None else sizes.repeat_interleave(C)
    device = next(model.parameters()).device
    x, _ = model.preprocess(wav.to(device))
    latents = model.encoder(x).float().cpu()  # [B', D, F]
    frames = latents.shape[-1]
    if sizes is None:
        valid = [frames] * latents.shape[0]
    else:
        valid = [min(frames, max(1, math.ceil(int(s) * frames / T))) for s in sizes]
    return torch.cat([latents[i, :, :n].t() for i, n in enumerate(valid)], dim=0)  # [N, D]


class GaussianStats:
    """Running count, sum and sum of outer products of D-dimensional vectors (float64)."""
    def __init__(self):
        self.count = 0.0
        self.sum: tp.Optional[torch.Tensor] = None
        self.outer: tp.Optional[torch.Tensor] = None

    def update(self, vectors: torch.Tensor) -> None:
        vectors = vectors.double()
        if self.sum is None:
            dim = vectors.shape[-1]
            self.sum = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count += vectors.shape[0]
        self.sum += vectors.sum(0)
        self.outer += vectors.t() @ vectors

    def all_reduce(self) -> None:
        import flashy
        if flashy.distrib.is_distributed() and self.sum is not None:
            count = torch.tensor([self.count], dtype=torch.float64)
            for tensor in (count, self.sum, self.outer):
                flashy.distrib.all_reduce(tensor)
            self.count = float(count.item())

    def mean_cov(self) -> tp.Tuple[np.ndarray, np.ndarray]:
        if self.sum is None or self.count < 2:
            raise RuntimeError("Need at least 2 frames to fit a Gaussian.")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.numpy(), cov.numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), as in FAD / FID."""
    from scipy import linalg
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


# ---- AudioCraft's metrics that need downloads ------------------------------------------------

def _missing(name: str, what: str) -> RuntimeError:
    return RuntimeError(f"evaluate.metrics.{name}=true but {what}. Install/download it, or set "
                        f"evaluate.metrics.{name}=false (the offline metrics, {FRECHET_LATENT_NAME} and "
                        "chroma_cosine, need nothing). See docs/EVALUATION.md.")


def check_optional_metrics(cfg) -> tp.List[str]:
    """Check up front that AudioCraft's enabled FAD / KLD / CLAP metrics can run.

    Returns the names of the enabled ones; raises a `RuntimeError` that says what to install or
    download when one cannot run (instead of failing deep inside, after minutes of generation).
    """
    from audiocraft.environment import AudioCraftEnvironment
    enabled = [name for name in ('fad', 'kld', 'text_consistency') if cfg.evaluate.metrics.get(name)]
    if 'fad' in enabled:
        fad = cfg.metrics.fad
        if fad.get('model', 'tf') != 'tf':
            raise _missing('fad', f"metrics.fad.model={fad.model} is unknown (AudioCraft has 'tf')")
        tf = fad.tf
        model_path = AudioCraftEnvironment.resolve_reference_path(str(tf.model_path))
        if not Path(model_path).exists():
            raise _missing('fad', f"the VGGish checkpoint {tf.model_path} (resolved to {model_path}) does not "
                           "exist: download vggish_model.ckpt (see AudioCraft's docs/METRICS.md) and set "
                           "metrics.fad.tf.model_path")
        if not tf.get('bin') or not Path(str(tf.bin)).exists():
            raise _missing('fad', f"metrics.fad.tf.bin={tf.get('bin')!r} is not a folder: FAD runs Google's "
                           "TensorFlow frechet_audio_distance code (git clone google-research, pip install "
                           "tensorflow in the Python named by TF_PYTHON_EXE) and needs its path there")
    if 'kld' in enabled:
        if cfg.metrics.kld.get('model', 'passt') != 'passt':
            raise _missing('kld', f"metrics.kld.model={cfg.metrics.kld.model} is unknown (AudioCraft has 'passt')")
        if importlib.util.find_spec('hear21passt') is None:
            raise _missing('kld', "the PaSST classifier is not installed: `make setup EXTRAS=metrics` in the "
                           "repository (or pip install hear21passt; its weights are downloaded from GitHub "
                           "on first use)")
    if 'text_consistency' in enabled:
        if cfg.metrics.text_consistency.get('model', 'clap') != 'clap':
            raise _missing('text_consistency', "only metrics.text_consistency.model=clap exists")
        if importlib.util.find_spec('laion_clap') is None:
            raise _missing('text_consistency', "CLAP is not installed: pip install laion_clap")
        clap_path = cfg.metrics.text_consistency.clap.model_path
        resolved = AudioCraftEnvironment.resolve_reference_path(str(clap_path))
        if not Path(resolved).exists():
            raise _missing('text_consistency', f"the CLAP checkpoint {clap_path} (resolved to {resolved}) does "
                           "not exist: download music_audioset_epoch_15_esc_90.14.pt from LAION-CLAP and set "
                           "metrics.text_consistency.clap.model_path")
    return enabled


def build_optional_metric(name: str, cfg, log_folder: Path):
    """One AudioCraft metric object ('fad', 'kld' or 'text_consistency'), errors made explicit."""
    from audiocraft import metrics
    from audiocraft.utils.utils import dict_from_config
    try:
        if name == 'fad':
            kwargs = dict_from_config(cfg.metrics.fad.tf)
            log_folder.mkdir(parents=True, exist_ok=True)
            return metrics.FrechetAudioDistanceMetric(**kwargs, log_folder=log_folder)
        if name == 'kld':
            return metrics.PasstKLDivergenceMetric(**dict_from_config(cfg.metrics.kld.passt))
        if name == 'text_consistency':
            return metrics.CLAPTextConsistencyMetric(**dict_from_config(cfg.metrics.text_consistency.clap))
    except Exception as exc:
        raise _missing(name, f"building AudioCraft's metric failed ({type(exc).__name__}: {exc})") from exc
    raise ValueError(name)
