"""What a test asserts of audio the code under test made (not silence) and of a compression
model's tokens on real clips. Test modules import this file as they import `browser` (tests/ is
on sys.path under pytest); measurements of clips are in `synth_statistics`.
"""
import typing as tp

import numpy as np
import torch

from audiocraft_ext.models.codec_health import CodebookUsage, check_codec_health

SILENCE_RMS = 1e-3


def as_array(wav: tp.Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """A mono clip as float64 [T] (channels averaged)."""
    wav = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    wav = wav.astype(np.float64)
    if wav.ndim == 2:
        wav = wav.mean(axis=0 if wav.shape[0] < wav.shape[1] else 1)
    return wav.reshape(-1)


def assert_audible(wav: tp.Union[torch.Tensor, np.ndarray], what: str) -> None:
    """Finite, and louder than silence."""
    wav = as_array(wav)
    assert np.isfinite(wav).all(), f"{what}: non-finite samples"
    rms = float(np.sqrt((wav ** 2).mean()))
    assert rms > SILENCE_RMS, f"{what}: RMS {rms:.2e}, silence"


def assert_codec_healthy(model: tp.Any, wav: torch.Tensor, what: str) -> tp.List[CodebookUsage]:
    """The package's own health check (every codebook uses >= 128 codes, perplexity >= 32 on `wav`
    [B, C, T]), and a reconstruction that keeps the clips' loudness (not silence)."""
    usage = check_codec_health(model, wav, what)
    with torch.no_grad():
        codes, scale = model.encode(wav)
        decoded = model.decode(codes, scale)
    for index in range(min(4, wav.shape[0])):
        assert_audible(decoded[index], f"{what}: reconstruction of clip {index}")
    return usage
