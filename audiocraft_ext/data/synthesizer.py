"""A small deterministic music synthesizer: a `ClipSpec` in, a mono clip out.

A clip is a chord progression in one key, played in one pattern (`PATTERNS`) by one timbre
(`TIMBRES`: wavetable additive voices, Karplus-Strong strings, FM bells, each with an ADSR
envelope) at one tempo, optionally over a light kick + hi-hat track. Everything random comes
from `ClipSpec.seed`, so a spec renders to the same samples every time. `sine_tone` is the
plain tone `write_tone_folder` writes.

Only numpy is imported: the synthetic dataset is written without importing torch or AudioCraft.
"""
from dataclasses import dataclass
import functools
import math
import typing as tp

import numpy as np

PEAK = 0.89  # -1 dBFS: normalised clips never clip, even after PCM_16 rounding
NOTE_NAMES = ('C', 'C#', 'D', 'Eb', 'E', 'F', 'F#', 'G', 'Ab', 'A', 'Bb', 'B')
SCALES = {'major': (0, 2, 4, 5, 7, 9, 11), 'minor': (0, 2, 3, 5, 7, 8, 10)}  # natural minor


@dataclass
class ClipSpec:
    """Everything that determines one clip (`synth_domains.sample_clip_spec` draws them).

    Args:
        domain: the domain's name (written in the sidecars).
        timbre, pattern: names from `TIMBRES` and `PATTERNS`.
        tonic, mode: the key, a name from `NOTE_NAMES` and 'major' or 'minor'.
        bpm: beats per minute.
        progression: scale degrees (0 = tonic) of the chords, one per bar, cycled.
        drums: whether the light kick + hi-hat track plays.
        low, high: MIDI range of the pitched notes (the bass goes an octave below).
        seed: for the note-level randomness (melody walk, velocities, noise).
    """
    domain: str
    timbre: str
    pattern: str
    tonic: str
    mode: str
    bpm: int
    progression: tp.Tuple[int, ...]
    drums: bool
    low: int
    high: int
    seed: int

    @property
    def key(self) -> str:
        return f'{self.tonic} {self.mode}'


# --------------------------------------------------------------------------------------------
# Timbres: each renders one note, [n] samples (gate + release) at `freq` Hz and `sr` Hz sampling,
# before the envelope; `rng` feeds the ones with noise.


_TABLE_SIZE = 8192
_GRID = np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE


@functools.lru_cache(maxsize=256)
def _wavetable(partials: tp.Tuple[tp.Tuple[float, float], ...]) -> np.ndarray:
    """Two periods of the fundamental (ratio 1) as `_TABLE_SIZE + 1` samples, last = first."""
    table = np.zeros(_TABLE_SIZE + 1)
    for ratio, amp in partials:
        table += amp * np.sin(2 * np.pi * 2 * ratio * _GRID)
    table.setflags(write=False)
    return table


def _midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _lookup(table: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Linear interpolation of `table` at fractional indices in [0, len(table) - 1]."""
    index = np.minimum(position.astype(np.int64), len(table) - 2)
    frac = position - index
    return table[index] * (1.0 - frac) + table[index + 1] * frac


def _additive(freq: float, n: int, sr: int, partials: tp.Sequence[tp.Tuple[float, float]],
              voices: tp.Sequence[tp.Tuple[float, float]] = ((0.0, 1.0),), vibrato: float = 0.0,
              tremolo: float = 0.0) -> np.ndarray:
    """Sum of sine partials (ratio, amplitude) below Nyquist, over (detune cents, gain) voices.

    A wavetable oscillator: one period of the partial sum, read at the note's phase.
    Ratios are multiples of 0.5, so a table period is two periods of `freq`.
    """
    t = np.arange(n) / sr
    cycles = freq * t / 2  # table periods
    if vibrato:  # 5 Hz pitch vibrato of `vibrato` (relative)
        cycles = cycles + vibrato * freq / 2 / (2 * np.pi * 5.0) * np.sin(2 * np.pi * 5.0 * t)
    out = np.zeros(n)
    for cents, gain in voices:
        detune = 2.0 ** (cents / 1200)
        below_nyquist = tuple(p for p in partials if p[0] * freq * detune < 0.45 * sr)
        out += gain * _lookup(_wavetable(below_nyquist), ((cycles * detune) % 1.0) * _TABLE_SIZE)
    if tremolo:
        out *= 1.0 - tremolo * (0.5 + 0.5 * np.sin(2 * np.pi * 6.0 * t))
    return out / sum(gain for _, gain in voices)


def _pad(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    partials = tuple((k, 1.0 / k ** 2) for k in range(1, 7))
    # A louder centre voice keeps the chorus beating shallow (no false onsets).
    return _additive(freq, n, sr, partials, voices=((-6.0, 0.35), (0.0, 1.0), (5.0, 0.35)))


def _organ(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    drawbars = ((0.5, 0.4), (1, 1.0), (2, 0.5), (3, 0.25), (4, 0.15))
    return _additive(freq, n, sr, drawbars, tremolo=0.15)


def _flute(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    return _additive(freq, n, sr, ((1, 1.0), (2, 0.12), (3, 0.04)), vibrato=0.004)


def _square(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    odd = tuple((k, 1.0 / k) for k in range(1, 200, 2))  # band-limited by `_additive`
    return _additive(freq, n, sr, odd, voices=((-4.0, 1.0), (4.0, 1.0)))


def _bell(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Two-operator FM with a decaying index: bright, inharmonic attack."""
    t = np.arange(n) / sr
    index = 3.0 * np.exp(-t / 0.25) + 0.4
    return np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 3.5 * freq * t))


def _plucked(freq: float, n: int, sr: int, rng: np.random.Generator, t60: float = 0.9) -> np.ndarray:
    """Karplus-Strong string: a noise burst through a delay line with an averaging filter.

    The loop runs a whole period at a time (every sample of a period only needs the period
    before it), at the integer delay just below the true period; a linear-interpolation resample
    then restores the exact pitch.
    """
    period = sr / freq
    delay = max(2, int(math.floor(period - 0.5)))  # the averaging filter adds half a sample
    ratio = (delay + 0.5) / period  # <= 1: rendered pitch is a little high
    total = int(math.ceil(n * ratio)) + 2
    gain = 10.0 ** (-3.0 * period / (sr * t60))  # per-period loss for the wanted T60
    y = np.empty(total + delay + 1)
    y[:delay + 1] = rng.uniform(-1.0, 1.0, delay + 1)
    for start in range(delay + 1, len(y), delay):
        end = min(start + delay, len(y))
        y[start:end] = gain * 0.5 * (y[start - delay:end - delay] + y[start - delay - 1:end - delay - 1])
    y -= y.mean()
    return _lookup(y, np.arange(n) * ratio)


@dataclass(frozen=True)
class Timbre:
    """A note generator with its ADSR envelope (seconds, sustain level) and caption word."""
    words: str
    render: tp.Callable[..., np.ndarray]
    attack: float
    decay: float
    sustain: float
    release: float
    gain: float = 1.0


TIMBRES: tp.Dict[str, Timbre] = {
    'pad': Timbre('soft pad', _pad, attack=0.45, decay=0.3, sustain=0.85, release=0.6, gain=0.8),
    'organ': Timbre('organ', _organ, attack=0.03, decay=0.1, sustain=0.9, release=0.08, gain=0.6),
    'flute': Timbre('mellow flute', _flute, attack=0.09, decay=0.15, sustain=0.8, release=0.15),
    'plucked': Timbre('plucked', _plucked, attack=0.002, decay=0.05, sustain=1.0, release=0.25),
    'square': Timbre('square lead', _square, attack=0.004, decay=0.08, sustain=0.6, release=0.05,
                     gain=0.5),
    'bell': Timbre('bell', _bell, attack=0.002, decay=0.35, sustain=0.15, release=0.3, gain=0.7),
}


def adsr(gate: int, sr: int, attack: float, decay: float, sustain: float,
         release: float) -> np.ndarray:
    """ADSR envelope: [gate + round(release * sr)] samples, the note held then released; peak 1.

    Times are in seconds, `sustain` a level in [0, 1].
    """
    a, d, r = (max(1, int(round(x * sr))) for x in (attack, decay, release))
    t = np.arange(gate)
    env = np.where(t < a, t / a, sustain + (1 - sustain) * np.exp(-(t - a) / (d / 4)))
    held = env[-1] if gate > 0 else 0.0
    tail = held * (1 - np.arange(1, r + 1) / r) ** 2
    return np.concatenate([env, tail])


def render_note(timbre: str, midi: float, duration: float, sr: int,
                rng: np.random.Generator, velocity: float = 1.0) -> np.ndarray:
    """One note of MIDI pitch `midi`: [round(duration * sr) + release] samples (`adsr`), the
    `duration` seconds held plus the timbre's release."""
    spec = TIMBRES[timbre]
    env = adsr(max(1, int(round(duration * sr))), sr, spec.attack, spec.decay, spec.sustain,
               spec.release)
    wave = spec.render(_midi_to_hz(midi), len(env), sr, rng)
    return spec.gain * velocity * env * wave


# --------------------------------------------------------------------------------------------
# Patterns: (onset in beats, length in beats, MIDI pitch, velocity) events.

Event = tp.Tuple[float, float, float, float]


def _chord(spec: ClipSpec, degree: int, low: int) -> tp.List[int]:
    """Root-position triad on scale `degree`, root at or above `low`."""
    scale = SCALES[spec.mode]
    tonic = NOTE_NAMES.index(spec.tonic)
    notes = []
    for step in (0, 2, 4):
        index = degree + step
        pitch_class = tonic + scale[index % 7] + 12 * (index // 7)
        notes.append(pitch_class)
    root = notes[0]
    shift = 12 * math.ceil((low - root) / 12)
    return [p + shift for p in notes]


def _scale_notes(spec: ClipSpec, low: int, high: int) -> tp.List[int]:
    tonic = NOTE_NAMES.index(spec.tonic)
    classes = {(tonic + s) % 12 for s in SCALES[spec.mode]}
    return [p for p in range(low, high + 1) if p % 12 in classes]


def pattern_events(spec: ClipSpec, bars: int, rng: np.random.Generator) -> tp.List[Event]:
    """The notes of `bars` 4/4 bars of the clip's pattern over its progression."""
    events: tp.List[Event] = []
    mid = (spec.low + spec.high) // 2

    def vel():
        return float(rng.uniform(0.75, 1.0))

    melody_pitch = None
    scale = _scale_notes(spec, mid - 5, spec.high)
    for bar in range(bars):
        degree = spec.progression[bar % len(spec.progression)]
        start = 4.0 * bar
        chord = _chord(spec, degree, spec.low + 2)
        if spec.pattern == 'block_chords':  # a chord every two beats, with the root an octave down
            for half in (0.0, 2.0):
                for pitch in [chord[0] - 12] + chord:
                    events.append((start + half, 1.9, pitch, 0.8 * vel()))
        elif spec.pattern in ('bass_melody', 'slow_melody'):
            if spec.pattern == 'bass_melody':
                for half in (0.0, 2.0):
                    events.append((start + half, 1.9, chord[0] - 12, vel()))
            else:  # a sustained chord under the tune
                for pitch in chord:
                    events.append((start, 3.9, pitch, 0.45 * vel()))
            chord_classes = {p % 12 for p in chord}
            beat = 0.0
            while beat < 4.0:
                length = 1.0 if (spec.pattern == 'bass_melody' and rng.random() < 0.7) else 2.0
                length = min(length, 4.0 - beat)
                if melody_pitch is None or beat == 0.0:  # land on a chord tone each bar
                    candidates = [p for p in scale if p % 12 in chord_classes]
                    near = melody_pitch if melody_pitch is not None else mid + 4
                    melody_pitch = min(candidates, key=lambda p: (abs(p - near), p))
                else:  # step through the scale
                    i = scale.index(melody_pitch) + int(rng.choice([-2, -1, 1, 2]))
                    melody_pitch = scale[min(max(i, 0), len(scale) - 1)]
                events.append((start + beat, 0.95 * length, melody_pitch, vel()))
                beat += length
        elif spec.pattern in ('arpeggio_up', 'arpeggio_down'):  # 16ths over two octaves
            tones = chord + [p + 12 for p in chord] + [chord[0] + 24]
            tones = [p for p in tones if p <= spec.high] or chord
            if spec.pattern == 'arpeggio_down':
                tones = tones[::-1]
            for step in range(16):
                accent = 1.0 if step % 4 == 0 else 0.8
                events.append((start + step / 4, 0.24, tones[step % len(tones)], accent * vel()))
        elif spec.pattern == 'repeated_notes':  # each chord tone repeated in 16ths, one per beat
            for beat in range(4):
                pitch = (chord + [chord[0] + 12])[beat] + 12
                pitch -= 12 * (pitch > spec.high)
                for step in range(4):
                    accent = 1.0 if step == 0 else 0.75
                    events.append((start + beat + step / 4, 0.2, pitch, accent * vel()))
        else:
            raise ValueError(f"Unknown pattern {spec.pattern!r}; expected one of {list(PATTERNS)}.")
    return events


PATTERNS: tp.Dict[str, str] = {  # name -> caption words
    'block_chords': 'block chords',
    'bass_melody': 'bass and melody',
    'slow_melody': 'melody over held chords',
    'arpeggio_up': 'rising arpeggio',
    'arpeggio_down': 'falling arpeggio',
    'repeated_notes': 'repeated notes',
}


def _drums(beats: int, beat_s: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """[n] samples of a light kick on every beat and a hi-hat on every 8th (`beat_s` seconds a beat)."""
    out = np.zeros(n)
    kick_t = np.arange(int(0.15 * sr)) / sr
    kick_freq = 50 + 90 * np.exp(-kick_t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(kick_freq) / sr) * np.exp(-kick_t / 0.05)
    hat_n = int(0.04 * sr)
    for eighth in range(2 * beats):
        onset = int(round(eighth * beat_s / 2 * sr))
        if onset >= n:
            break
        if eighth % 2 == 0:
            seg = kick[:n - onset]
            out[onset:onset + len(seg)] += 0.9 * seg
        noise = np.diff(rng.uniform(-1, 1, hat_n + 1))  # differencing: a crude high-pass
        hat = 0.25 * noise * np.exp(-np.arange(hat_n) / (0.008 * sr))
        seg = hat[:n - onset]
        out[onset:onset + len(seg)] += seg
    return out


# --------------------------------------------------------------------------------------------
# Clips


def render_clip(spec: ClipSpec, duration: float, sample_rate: int = 16000) -> np.ndarray:
    """Render a clip: mono float32 of `round(duration * sample_rate)` samples, peak `PEAK`."""
    n = int(round(duration * sample_rate))
    rng = np.random.default_rng(spec.seed)
    beat_s = 60.0 / spec.bpm
    bars = int(math.ceil(duration / (4 * beat_s)))
    out = np.zeros(n)
    for onset, length, pitch, velocity in pattern_events(spec, bars, rng):
        start = int(round(onset * beat_s * sample_rate))
        if start >= n:
            continue
        note = render_note(spec.timbre, pitch, length * beat_s, sample_rate, rng, velocity)
        note = note[:n - start]
        out[start:start + len(note)] += note
    if spec.drums:
        peak = np.max(np.abs(out)) or 1.0
        out += 0.5 * peak * _drums(4 * bars, beat_s, n, sample_rate, rng)
    fade = min(n // 4, int(0.02 * sample_rate))  # no click at the cut
    if fade:
        out[-fade:] *= np.linspace(1.0, 0.0, fade)
    peak = np.max(np.abs(out))
    if not np.isfinite(peak) or peak == 0:
        raise RuntimeError(f"Rendered silence or non-finite audio for {spec}.")
    return (PEAK * out / peak).astype(np.float32)


def sine_tone(freq: float, duration: float, sample_rate: int) -> np.ndarray:
    """A sine at `freq` Hz, amplitude 0.3, faded out linearly over its last 1/8 s.

    Returns:
        float32 array of `int(duration * sample_rate)` samples.
    """
    times = np.arange(int(duration * sample_rate)) / sample_rate
    wav = 0.3 * np.sin(2 * np.pi * freq * times) * np.minimum(1.0, 8 * (duration - times))
    return wav.astype(np.float32)
