"""Whether a compression model's tokenizer is alive, and a k-means refit of its codebooks.

A small EnCodec can collapse: every frame lands on a few codes of each codebook (the demo's first
codec, trained for a minute by `CompressionSolver`, used 1 to 12 of 256), and its tokens then
carry nothing of the music. `check_codec_health` runs wherever the demo's codec is built or
loaded (scripts/make_pretrained.py, the demo's pretrained base) and stops with the numbers.
`refit_codebooks` fits each residual stage's codebook by k-means on the encoder's outputs: it
revives codebooks whose moving averages collapsed while the encoder still carries the music.
"""
from dataclasses import dataclass
import math
import typing as tp

from audiocraft.models.encodec import CompressionModel, EncodecModel
from audiocraft.quantization.core_vq import kmeans
import torch

from .audiocraft_internals import euclidean_codebook

MIN_CODES_USED = 128
MIN_PERPLEXITY = 32.0


class CodecCollapseError(RuntimeError):
    """A compression model codes real audio with too few codes per codebook."""


@dataclass
class CodebookUsage:
    """How one codebook codes a set of clips: distinct codes used, of `cardinality`, and the
    perplexity of their distribution (exp of its entropy in nats)."""
    used: int
    cardinality: int
    perplexity: float


def code_usage(codes: torch.Tensor, cardinality: int) -> tp.List[CodebookUsage]:
    """Per codebook usage of `codes` [B, K, T] (integers in [0, cardinality))."""
    usage = []
    for k in range(codes.shape[1]):
        counts = torch.bincount(codes[:, k].reshape(-1), minlength=cardinality).double()
        p = counts[counts > 0] / counts.sum()
        usage.append(CodebookUsage(int((counts > 0).sum()), cardinality, float(torch.exp(-(p * p.log()).sum()))))
    return usage


@torch.no_grad()
def codec_usage(model: CompressionModel, wav: torch.Tensor) -> tp.List[CodebookUsage]:
    """Per codebook usage of `model` on `wav` [B, C, T] at its sample rate."""
    codes, _ = model.eval().encode(wav)
    return code_usage(codes, model.cardinality)


def codes_needed(frames: int, cardinality: int, min_used: int = MIN_CODES_USED) -> int:
    """Codes a healthy codebook shows in `frames` frames: `min_used` (at most `cardinality`), or a
    tenth of the frames on fewer than 10 x `min_used` of them. A sample that small cannot show 128
    codes of a healthy codebook (the shipped codec: about 80 codes in 400 frames, perplexity 60),
    while a collapsed one uses 1 to 12 whatever the sample."""
    return min(min_used, cardinality, frames // 10)


def check_codec_health(model: CompressionModel, wav: torch.Tensor, what: str,
                       min_used: int = MIN_CODES_USED, min_perplexity: float = MIN_PERPLEXITY
                       ) -> tp.List[CodebookUsage]:
    """`codec_usage`, raising `CodecCollapseError` when a codebook uses fewer codes than
    `codes_needed` or has a perplexity under `min_perplexity` on `wav` [B, C, T] (held-out clips)."""
    usage = codec_usage(model, wav)
    frames = wav.shape[0] * math.ceil(wav.shape[-1] * model.frame_rate / model.sample_rate)
    needed = codes_needed(frames, model.cardinality, min_used)
    bad = [k for k, u in enumerate(usage) if u.used < needed or u.perplexity < min_perplexity]
    if bad:
        numbers = ', '.join(f"{u.used}/{u.cardinality} codes, perplexity {u.perplexity:.1f}" for u in usage)
        raise CodecCollapseError(
            f"The compression model {what} has collapsed: per codebook {numbers} on {wav.shape[0]} held-out "
            f"clips, {frames} frames (needed: at least {needed} codes and a perplexity of {min_perplexity:g} "
            "in every codebook). Its tokens cannot carry the music: train it longer (scripts/make_pretrained.py "
            "trains the demo's), or refit its codebooks (audiocraft_ext.models.codec_health.refit_codebooks), "
            "then check again.")
    return usage


@torch.no_grad()
def refit_codebooks(model: EncodecModel, wav: torch.Tensor, iters: int = 30) -> None:
    """Fit each residual stage's codebook by k-means on the encoder's outputs for `wav` [B, C, T]
    (training audio), in place: stage k is fitted on what stages 1..k-1 leave. The encoder and
    decoder are unchanged; the moving averages restart from the fitted codebooks."""
    model.eval()
    x, _ = model.preprocess(wav)
    z = model.encoder(x)                                   # [B, D, T']
    residual = z.transpose(1, 2).reshape(-1, z.shape[1])   # [B * T', D]
    for layer in model.quantizer.vq.layers:
        codebook = euclidean_codebook(layer)
        projected = layer.project_in(residual)
        embed, cluster_size = kmeans(projected, codebook.codebook_size, iters)
        codebook.embed.data.copy_(embed)
        codebook.embed_avg.data.copy_(embed)
        codebook.cluster_size.data.copy_(cluster_size)
        codebook.inited.data.fill_(1)
        residual = residual - layer.project_out(codebook.dequantize(codebook.quantize(projected)))
