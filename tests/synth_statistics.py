"""What clips sound like, measured: onset rate, spectral centroid and flatness, and sanity.

Used by tests/test_synth.py to check that the two domains differ as the table in
audiocraft_ext/data/synth_domains.py says (every new clip brighter and busier than every old clip),
and by the tests of the rendered score set and of generated audio (`audio_checks`).
"""
import math
import typing as tp

import numpy as np


def _frames(wav: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[F, n_fft] frames of `wav` (zero-padded to at least one frame)."""
    wav = np.pad(wav, (0, max(0, n_fft - len(wav))))
    count = 1 + (len(wav) - n_fft) // hop
    return wav[np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]]


def spectral_flatness(wav: np.ndarray, n_fft: int = 1024, hop: int = 256) -> float:
    """Median over frames (64 ms at 16 kHz) of the geometric over the arithmetic mean of the power
    spectrum of `wav` ([T] mono): near 0.56 for white noise, near 0 for a few sustained notes."""
    power = np.abs(np.fft.rfft(_frames(np.asarray(wav, dtype=np.float64).reshape(-1), n_fft, hop)
                               * np.hanning(n_fft), axis=1)) ** 2 + 1e-12
    return float(np.median(np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)))


def onset_rate(wav: np.ndarray, sample_rate: int, threshold_db: float = 3.0) -> float:
    """Note onsets per second of `wav` ([T] mono samples): peaks of the spectral flux in 24
    log-spaced bands.

    Flux is the mean over bands of the rise in dB over two 16 ms hops (levels floored 60 dB
    below the loudest band); a peak counts when it exceeds `threshold_db` and is 50 ms from the
    previous one. Slow pad attacks and the beating of detuned voices stay below 3 dB; plucks,
    organ keys and 16th-note arpeggios are counted within a few percent.
    """
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    if len(wav) == 0:
        return 0.0
    n_fft = 2 ** int(round(math.log2(0.032 * sample_rate)))
    hop = n_fft // 2
    spec = np.abs(np.fft.rfft(_frames(wav, n_fft, hop) * np.hanning(n_fft), axis=1))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = np.geomspace(60.0, 0.45 * sample_rate, 25)
    bands = np.stack([spec[:, (freqs >= lo) & (freqs < hi)].sum(axis=1)
                      for lo, hi in zip(edges[:-1], edges[1:])], axis=1)  # [F, 24]
    level = 20 * np.log10(np.maximum(bands, max(bands.max(), 1e-12) * 1e-3))
    flux = np.zeros(len(level))
    flux[1:-1] = np.maximum(0.0, level[2:] - level[:-2]).mean(axis=1)
    min_gap = max(1, int(round(0.05 * sample_rate / hop)))
    onsets, last = 0, -min_gap
    for i in range(1, len(flux) - 1):
        if flux[i] > threshold_db and flux[i] >= flux[i - 1] and flux[i] >= flux[i + 1] \
                and i - last >= min_gap:
            onsets += 1
            last = i
    return onsets / (len(wav) / sample_rate)


def clip_statistics(wav: np.ndarray, sample_rate: int) -> tp.Dict[str, float]:
    """Sanity and domain statistics of a mono clip `wav` ([T] samples).

    Returns peak, rms, clipped_fraction (|x| >= 0.999), silent_fraction (64 ms frames 40 dB
    below the loudest), finite (1.0 if no NaN/inf), centroid_hz (energy-weighted spectral
    centroid over the clip) and onset_rate (`onset_rate`, per second).
    """
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    finite = bool(np.all(np.isfinite(wav)))
    if len(wav) == 0 or not finite:
        return {'peak': float('nan'), 'rms': float('nan'), 'clipped_fraction': float('nan'),
                'silent_fraction': 1.0, 'finite': float(finite), 'centroid_hz': float('nan'),
                'onset_rate': float('nan')}
    n_fft = 2 ** int(round(math.log2(0.064 * sample_rate)))
    frames = _frames(wav, n_fft, n_fft // 4)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    frame_rms = np.sqrt(np.mean(frames ** 2, axis=1))
    loudest = frame_rms.max()
    return {
        'peak': float(np.max(np.abs(wav))),
        'rms': float(np.sqrt(np.mean(wav ** 2))),
        'clipped_fraction': float(np.mean(np.abs(wav) >= 0.999)),
        'silent_fraction': float(np.mean(frame_rms < loudest * 1e-2)) if loudest > 0 else 1.0,
        'finite': 1.0,
        'centroid_hz': float((power * freqs).sum() / max(power.sum(), 1e-30)),
        'onset_rate': onset_rate(wav, sample_rate),
    }
