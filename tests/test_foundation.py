"""The ground the rest stands on: audio I/O through the pinned stack, a light package import,
and the `audiocraft-ext` command."""
import math
import os
from pathlib import Path
import subprocess
import sys

import pytest
import soundfile
import torch
import torchaudio

SAMPLE_RATE = 16000
# 16-bit PCM stores round(x * 32768) / 32768: a round trip is off by at most half a step;
# allow two steps for encoders that truncate or dither.
PCM16_ATOL = 2 / 32768
HEAVY_MODULES = ('torch', 'torchaudio', 'audiocraft', 'xformers')


def _sines(freqs=(440.0, 660.0), seconds=0.5, amplitude=0.5) -> torch.Tensor:
    """One sine per channel, [C, T], well inside [-1, 1] so no normaliser touches it."""
    t = torch.arange(int(seconds * SAMPLE_RATE), dtype=torch.float64) / SAMPLE_RATE
    return torch.stack([amplitude * torch.sin(2 * math.pi * f * t) for f in freqs]).float()


def _read_soundfile(path: Path):
    data, sr = soundfile.read(str(path), dtype='float32', always_2d=True)  # [T, C]
    return torch.from_numpy(data).t(), sr


def test_torchaudio_save_roundtrip(tmp_path):
    wav = _sines()
    path = tmp_path / 'sine.wav'
    torchaudio.save(str(path), wav, SAMPLE_RATE)  # torchaudio 2.9: through torchcodec + FFmpeg

    for reader in (_read_soundfile, lambda p: torchaudio.load(str(p))):
        back, sr = reader(path)
        assert sr == SAMPLE_RATE
        assert back.shape == wav.shape
        torch.testing.assert_close(back, wav, atol=PCM16_ATOL, rtol=0)


def test_audiocraft_audio_write_roundtrip(tmp_path):
    from audiocraft.data.audio import audio_read, audio_write
    wav = _sines()
    # No normalisation, and 'clip' at -1 dB leaves a 0.5 peak alone: the samples go to disk as is.
    path = audio_write(tmp_path / 'sine', wav, SAMPLE_RATE, normalize=False, strategy='clip')
    assert path == tmp_path / 'sine.wav'

    info = soundfile.info(str(path))
    assert info.subtype == 'PCM_16'  # audio_write asks ffmpeg for pcm_s16le
    for reader in (_read_soundfile, audio_read):
        back, sr = reader(path)
        assert sr == SAMPLE_RATE
        assert back.shape == wav.shape
        torch.testing.assert_close(back, wav, atol=PCM16_ATOL, rtol=0)


def _run_python(code: str, pycache: Path) -> subprocess.CompletedProcess:
    """`python -W default -c code`, every module compiled from source (the session's bytecode cache,
    conftest.py, would hide the warnings that compiling a source emits) into the empty `pycache`."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(pycache))
    return subprocess.run([sys.executable, '-W', 'default', '-c', code],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize('module', ['audiocraft_ext', 'audiocraft_ext.cli'])
def test_import_is_light_and_quiet(module, tmp_path):
    proc = _run_python(
        f"import sys, {module}\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n", tmp_path / 'pycache')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]', f"`import {module}` pulled in {proc.stdout.strip()}"
    assert proc.stderr == '', f"`import {module}` wrote to stderr:\n{proc.stderr}"


def test_cli_help_is_fast_and_lists_demo():
    proc = subprocess.run([sys.executable, '-m', 'audiocraft_ext.cli', '--help'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'demo' in proc.stdout


def test_cli_demo_options():
    """The demo itself runs end to end in tests/test_demo.py (--quick); here only its options."""
    from audiocraft_ext.cli import build_parser
    args = build_parser().parse_args(['demo', '--out', 'x', '--seed', '1', '--quick', '--duration', '2'])
    assert (args.out, args.seed, args.quick, args.duration) == ('x', 1, True, 2.0)
