"""What a test looks at in audio the code under test made: not silence, how much of a clip is flat
noise; and a compression model's tokens on real clips.

Spectral flatness (geometric over arithmetic mean of the power spectrum, per 64 ms frame at 16
kHz, then the median over frames) is near 0.56 for white noise and near 0 for a few sustained notes; real
music rendered by the score set measures 0.001-0.05. Test modules import this file as they
import `browser` (tests/ is on sys.path under pytest).
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


def power_spectrogram(wav: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """|STFT|^2 of a mono clip [T] with a Hann window: [frames, n_fft // 2 + 1]."""
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2


def spectral_flatness(wav: tp.Union[torch.Tensor, np.ndarray]) -> float:
    """Median over frames of the spectral flatness of a clip (see module doc)."""
    power = power_spectrogram(as_array(wav)) + 1e-12
    flatness = np.exp(np.log(power).mean(axis=-1)) / power.mean(axis=-1)
    return float(np.median(flatness))


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
