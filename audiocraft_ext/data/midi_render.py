"""MIDI to audio with the FluidSynth command and a General MIDI SoundFont, bounded in time and size.

`render_midi` runs ``fluidsynth -ni -q -T raw -O float -E little -r SR -z 64 -g GAIN -C 0 -R 1
-o synth.dynamic-sample-loading=1 -F - SOUNDFONT FILE.mid`` (the SoundFont's samples are loaded
as notes need them: 0.05 s to start instead of 0.15 s for the 148 MB FluidR3 GM): raw 32-bit float stereo on stdout, read only up to the end of the
excerpt asked for, then the process is killed. FluidSynth cannot seek, so an excerpt at 40 s
costs the rendering of 40 s (about 0.25 s of CPU for a four-voice chorale at 16 kHz). Nothing
is written to disk, and a wall-clock timeout kills the process too: some MIDI files make
``fluidsynth -F out.wav`` run forever (one wrote 50 GB in 15 minutes), here they cost at most
the bytes of the excerpt.

Chorus is off (it blurs a solo fiddle into an ensemble), FluidSynth's default reverb is on
(a dry organ sounds like no room at all). With the same FluidSynth build and SoundFont, the same
arguments give the same samples (no dither: float output). The period is pinned to FluidSynth's
default of 64 frames (``-z 64``): the MIDI player advances once a period, so a longer one both
changes the samples and blurs the timing (1024 frames are 64 ms at 16 kHz).

The SoundFont is the `soundfont` argument, else $AUDIOCRAFT_EXT_SOUNDFONT, else the first of
`DEFAULT_SOUNDFONTS` that exists (Debian's `fluid-soundfont-gm` installs the first).
"""
import os
from pathlib import Path
import select
import shutil
import subprocess
import time
import typing as tp

import numpy as np

DEFAULT_SOUNDFONTS = (
    '/usr/share/sounds/sf2/FluidR3_GM.sf2',      # Debian, Ubuntu: fluid-soundfont-gm
    '/usr/share/sounds/sf2/default-GM.sf2',
    '/usr/share/soundfonts/FluidR3_GM.sf2',      # Fedora, Arch
    '/usr/share/soundfonts/default.sf2',
)
SOUNDFONT_ENV = 'AUDIOCRAFT_EXT_SOUNDFONT'
INSTALL_HINT = ("On Debian or Ubuntu: sudo apt-get install fluidsynth fluid-soundfont-gm "
                "(scripts/setup.sh does it)")
GAIN = 0.5             # FluidSynth's master gain; the level is set afterwards by `normalise_loudness`
TARGET_RMS = 0.1       # -20 dBFS
PEAK_LIMIT = 0.891     # -1 dBFS
SILENCE_PEAK = 1e-4    # below this (-80 dBFS) an excerpt counts as silence
_FRAME_BYTES = 8       # stereo float32


class MidiRenderError(RuntimeError):
    """FluidSynth could not render a MIDI file, or rendered silence; the message says what to do."""


class RendererNotFoundError(MidiRenderError, FileNotFoundError):
    """The `fluidsynth` command or a SoundFont is missing."""


def find_fluidsynth() -> str:
    """The `fluidsynth` command's path, or `RendererNotFoundError` saying how to install it."""
    found = shutil.which('fluidsynth')
    if found is None:
        raise RendererNotFoundError(
            f"The fluidsynth command was not found on PATH: rendering MIDI needs it. {INSTALL_HINT}.")
    return found


def find_soundfont(soundfont: tp.Optional[tp.Union[str, Path]] = None) -> Path:
    """The SoundFont to play with (see module doc), or `RendererNotFoundError`."""
    if soundfont is not None:
        path = Path(soundfont).expanduser()
        if not path.is_file():
            raise RendererNotFoundError(f"SoundFont not found: {path}. Pass an existing .sf2 file "
                                        f"(--soundfont PATH), or install the default one. {INSTALL_HINT}.")
        return path.resolve()
    if os.environ.get(SOUNDFONT_ENV):
        path = Path(os.environ[SOUNDFONT_ENV]).expanduser()
        if not path.is_file():
            raise RendererNotFoundError(f"${SOUNDFONT_ENV}={path}: no such SoundFont file. Point it at "
                                        f"an existing .sf2, or unset it to use the default one.")
        return path.resolve()
    for candidate in DEFAULT_SOUNDFONTS:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    raise RendererNotFoundError(
        f"No General MIDI SoundFont found (looked for {', '.join(DEFAULT_SOUNDFONTS)}). {INSTALL_HINT}, "
        f"or pass a .sf2 file (--soundfont PATH, or ${SOUNDFONT_ENV}).")


def fluidsynth_version() -> str:
    """E.g. 'FluidSynth runtime version 2.3.1' (part of what a rendered dataset depends on)."""
    proc = subprocess.run([find_fluidsynth(), '--version'], capture_output=True, text=True, timeout=30)
    return proc.stdout.splitlines()[0].strip() if proc.stdout else 'unknown'


def fluidsynth_command(path: Path, sample_rate: int, soundfont: Path, gain: float = GAIN) -> tp.List[str]:
    return [find_fluidsynth(), '-ni', '-q', '-T', 'raw', '-O', 'float', '-E', 'little',
            '-r', str(int(sample_rate)), '-z', '64', '-g', f'{gain:g}', '-C', '0', '-R', '1',
            '-o', 'synth.cpu-cores=1', '-o', 'synth.dynamic-sample-loading=1',
            '-F', '-', str(soundfont), str(path)]


def _read_bounded(proc: subprocess.Popen, skip: int, keep: int,
                  deadline: float) -> tp.Tuple[bytes, int, bool, str]:
    """Read the process's stdout up to byte `skip + keep`, keeping only the bytes after `skip` (an
    excerpt an hour in holds no hour of audio in memory), and the first 4 kB of its stderr (the
    rest is read and dropped: nothing it prints reaches the disk).

    Returns:
        (kept bytes, bytes read, timed out, stderr text).
    """
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    chunks, size, wanted, errors, open_ = [], 0, skip + keep, b'', {out, err}
    while size < wanted and out in open_:
        left = deadline - time.monotonic()
        if left <= 0:
            return b''.join(chunks), size, True, errors.decode('utf-8', errors='replace')
        ready, _, _ = select.select(sorted(open_), [], [], min(left, 1.0))
        if err in ready:
            message = os.read(err, 1 << 16)
            if not message:
                open_.discard(err)
            errors += message[:max(0, 4096 - len(errors))]
        if out in ready:
            chunk = os.read(out, min(1 << 20, wanted - size))
            if not chunk:  # the file ended before the excerpt did
                open_.discard(out)
                continue
            if size + len(chunk) > skip:
                chunks.append(chunk[max(0, skip - size):])
            size += len(chunk)
    return b''.join(chunks), size, False, errors.decode('utf-8', errors='replace')


def normalise_loudness(wav: np.ndarray, target_rms: float = TARGET_RMS,
                       peak_limit: float = PEAK_LIMIT) -> np.ndarray:
    """Scale `wav` to `target_rms`, or less where its peak would pass `peak_limit`, so that a
    sustained organ and a solo flute play at about the same level. Silence stays silence."""
    wav = np.asarray(wav, dtype=np.float64)
    rms = float(np.sqrt(np.mean(wav ** 2))) if len(wav) else 0.0
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    if peak <= 0.0:
        return wav.astype(np.float32)
    scale = min(target_rms / rms, peak_limit / peak)
    return (wav * scale).astype(np.float32)


def render_midi(path: tp.Union[str, Path], sample_rate: int, start_s: float = 0.0,
                duration_s: float = 10.0, soundfont: tp.Optional[tp.Union[str, Path]] = None,
                normalise: bool = True, timeout_s: tp.Optional[float] = None) -> np.ndarray:
    """Render `duration_s` seconds of a MIDI file from `start_s` to mono audio.

    Args:
        path: a standard MIDI file.
        sample_rate: in Hz (FluidSynth renders at this rate directly).
        start_s, duration_s: the excerpt; where the file ends earlier, the rest is zeros.
        soundfont: a .sf2 file; None looks for one (module doc).
        normalise: `normalise_loudness` (else FluidSynth's level at gain `GAIN`).
        timeout_s: wall-clock limit of the FluidSynth process (default 30 s plus a tenth of the
            excerpt's end time).
    Returns:
        [round(duration_s * sample_rate)] float32 samples, mono (the mean of FluidSynth's two
        channels).
    Raises:
        RendererNotFoundError: no fluidsynth command, no SoundFont, no such MIDI file.
        MidiRenderError: FluidSynth failed, timed out, or the excerpt is silence.
    """
    path = Path(path)
    if not path.is_file():
        raise RendererNotFoundError(f"MIDI file not found: {path}.")
    if start_s < 0 or duration_s <= 0 or sample_rate <= 0:
        raise ValueError(f"Need start_s >= 0, duration_s > 0 and sample_rate > 0, got {start_s}, "
                         f"{duration_s}, {sample_rate}.")
    font = find_soundfont(soundfont)
    start, count = int(round(start_s * sample_rate)), int(round(duration_s * sample_rate))
    timeout = timeout_s if timeout_s is not None else 30.0 + 0.1 * (start_s + duration_s)
    proc = subprocess.Popen(fluidsynth_command(path, sample_rate, font), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        raw, read, timed_out, stderr = _read_bounded(proc, start * _FRAME_BYTES, count * _FRAME_BYTES,
                                                     time.monotonic() + timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    stderr = stderr.strip()
    if timed_out:
        raise MidiRenderError(f"FluidSynth did not render {start_s + duration_s:g} s of {path} within "
                              f"{timeout:g} s; it was stopped. Is the machine overloaded?")
    if not read and proc.returncode not in (0, -9):
        raise MidiRenderError(f"FluidSynth failed on {path} (exit {proc.returncode}): {stderr or 'no message'}")
    usable = len(raw) // _FRAME_BYTES * _FRAME_BYTES
    stereo = np.frombuffer(raw[:usable], dtype='<f4').reshape(-1, 2)
    mono = np.pad(stereo.astype(np.float64).mean(axis=1), (0, count - len(stereo)))
    if not np.all(np.isfinite(mono)) or float(np.max(np.abs(mono), initial=0.0)) < SILENCE_PEAK:
        frames = read // _FRAME_BYTES
        ends = f"the file ends at {frames / sample_rate:.2f} s" if frames < start + count else ''
        reason = stderr or ends or 'no note sounds there, or its programs have no sound in the SoundFont'
        raise MidiRenderError(f"{path} renders silence from {start_s:g} s to {start_s + duration_s:g} s "
                              f"({reason}). Choose an excerpt where notes play, or check the file "
                              f"in a MIDI player.")
    return normalise_loudness(mono) if normalise else mono.astype(np.float32)
