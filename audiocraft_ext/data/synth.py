"""A small deterministic music synthesizer and the demo's two-domain captioned dataset.

Every clip is a chord progression in one key, played in one pattern by one timbre at one tempo,
and its caption says exactly that ("fast plucked rising arpeggio in A minor, 130 bpm").
Two domains differ in everything a listener (and a spectrum) notices:

=========  =====================================  ==========================================
           ``old`` (what the base learns)         ``new`` (what the extension adapts to)
=========  =====================================  ==========================================
timbres    soft pad, organ, mellow flute          plucked string (Karplus-Strong), square
                                                  lead, bell (FM)
keys       major (C, D, F, G)                     minor (A, B, D, E)
tempi      70, 80, 90 bpm ("slow")                120, 130, 140 bpm ("fast")
patterns   block chords, bass and melody, melody  rising / falling arpeggio, repeated notes
           over held chords (<= 1 onset a beat)   (16th notes: 4 onsets a beat)
register   low-mid (MIDI 38-79)                   mid-high (MIDI 59-88)
drums      none                                   light kick + hi-hat in half the clips
=========  =====================================  ==========================================

So the two domains differ by construction in onset rate and spectral centroid, and
`clip_statistics` measures both; the tests assert that every new clip beats every old clip by a
margin. Over 40 clips of 8 s at 16 kHz (seed 0), min / median / max:

    onset rate (sharp onsets/s)   old 0.12 / 0.62 / 1.25     new 7.9 / 8.6 / 9.4
    spectral centroid (Hz)        old 176 / 247 / 469        new 764 / 1103 / 4481

(slow pad attacks hardly register as onsets, which is what they sound like). The caption
vocabulary is small on purpose (each domain has 3 x 3 x 4 x 3 = 108 timbre/pattern/key/tempo
combinations, twice that for ``new`` with and without drums) so that a model conditioned on
whole captions (AudioCraft's LUT conditioner with the ``noop`` tokenizer hashes the full string)
sees each caption more than once.

On disk (`write_dataset`), in AudioCraft's layout::

    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.wav   mono PCM_16
    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.json  sidecar, MusicInfo fields
    OUT/egs/<domain>/<split>/data.jsonl                        one AudioMeta per line
    OUT/egs/<domain>/synth.json                                the parameters that made it

Train on it with ``dset=audio/egs egs_root=OUT/egs/<domain>``. Manifests hold absolute paths
(AudioCraft resolves relative ones against the directory a command starts from). Everything is
a function of (seed, domain, split, clip index): the same arguments give byte-identical files,
and changing the size of one split does not change the clips of another.

Only numpy, soundfile and the standard library are imported: writing a dataset takes seconds,
not the half minute an AudioCraft import costs. The manifest lines are what AudioCraft's
`save_audio_meta` writes (checked by the tests).
"""
import argparse
from dataclasses import dataclass
import functools
import json
import math
from pathlib import Path
import sys
import typing as tp
import zlib

import numpy as np
import soundfile

SYNTH_VERSION = 1
DOMAINS = ('old', 'new')
SPLITS = ('train', 'valid', 'evaluate', 'generate')
# A split size is a fraction of `num_clips` (float) or an exact count (int); train takes the rest.
DEFAULT_SPLITS: tp.Tuple[tp.Tuple[str, float], ...] = (
    ('train', 0.7), ('valid', 0.1), ('evaluate', 0.1), ('generate', 0.1))
ARTIST = 'audiocraft-ext synth'
PEAK = 0.89  # -1 dBFS: normalised clips never clip, even after PCM_16 rounding
NOTE_NAMES = ('C', 'C#', 'D', 'Eb', 'E', 'F', 'F#', 'G', 'Ab', 'A', 'Bb', 'B')
SCALES = {'major': (0, 2, 4, 5, 7, 9, 11), 'minor': (0, 2, 3, 5, 7, 8, 10)}  # natural minor
# Chord progressions as scale degrees (0 = tonic), one chord per bar, cycled.
PROGRESSIONS = {
    'major': ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4)),  # I-V-vi-IV, I-IV-V-I, ...
    'minor': ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2)),  # i-VI-III-VII, i-iv-v-i, ...
}


# --------------------------------------------------------------------------------------------
# Domains


@dataclass(frozen=True)
class DomainSpec:
    """What a domain may render; each clip draws one value of each field.

    Args:
        name: domain name, written in the sidecars and file names.
        timbres: names from `TIMBRES`.
        patterns: names from `PATTERNS`.
        mode: 'major' or 'minor'.
        tonics: tonic note names from `NOTE_NAMES`.
        tempi: beats per minute.
        drums_probability: chance that a clip gets the light kick + hi-hat track.
        low, high: MIDI range of the pitched notes (melody, chords, arpeggios; bass goes lower).
        genre, moods: metadata written in the sidecars.
    """
    name: str
    timbres: tp.Tuple[str, ...]
    patterns: tp.Tuple[str, ...]
    mode: str
    tonics: tp.Tuple[str, ...]
    tempi: tp.Tuple[int, ...]
    drums_probability: float
    low: int
    high: int
    genre: str
    moods: tp.Tuple[str, ...]


DOMAIN_SPECS: tp.Dict[str, DomainSpec] = {
    'old': DomainSpec(name='old', timbres=('pad', 'organ', 'flute'),
                      patterns=('block_chords', 'bass_melody', 'slow_melody'),
                      mode='major', tonics=('C', 'D', 'F', 'G'), tempi=(70, 80, 90),
                      drums_probability=0.0, low=48, high=79,
                      genre='ambient', moods=('calm', 'warm', 'peaceful')),
    'new': DomainSpec(name='new', timbres=('plucked', 'square', 'bell'),
                      patterns=('arpeggio_up', 'arpeggio_down', 'repeated_notes'),
                      mode='minor', tonics=('A', 'B', 'D', 'E'), tempi=(120, 130, 140),
                      drums_probability=0.5, low=57, high=88,
                      genre='electronic', moods=('energetic', 'tense', 'driving')),
}


@dataclass
class ClipSpec:
    """Everything that determines one clip (drawn by `sample_clip_spec`)."""
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
    seed: int  # for the note-level randomness (melody walk, velocities, noise)

    @property
    def key(self) -> str:
        return f'{self.tonic} {self.mode}'


def _rng(*keys: tp.Union[int, str]) -> np.random.Generator:
    """A generator that depends only on `keys` (strings hashed with a stable CRC)."""
    entropy = [k % 2 ** 64 if isinstance(k, int) else zlib.crc32(k.encode('utf-8')) for k in keys]
    return np.random.default_rng(entropy)


def sample_clip_spec(domain: tp.Union[str, DomainSpec], rng: np.random.Generator) -> ClipSpec:
    """Draw one clip's timbre, pattern, key, tempo, progression and drums from a domain."""
    spec = DOMAIN_SPECS[domain] if isinstance(domain, str) else domain
    timbre = spec.timbres[rng.integers(len(spec.timbres))]
    pattern = spec.patterns[rng.integers(len(spec.patterns))]
    tonic = spec.tonics[rng.integers(len(spec.tonics))]
    bpm = int(spec.tempi[rng.integers(len(spec.tempi))])
    progressions = PROGRESSIONS[spec.mode]
    progression = progressions[rng.integers(len(progressions))]
    drums = bool(rng.random() < spec.drums_probability)
    return ClipSpec(domain=spec.name, timbre=timbre, pattern=pattern, tonic=tonic, mode=spec.mode,
                    bpm=bpm, progression=tuple(progression), drums=drums, low=spec.low,
                    high=spec.high, seed=int(rng.integers(2 ** 31)))


# --------------------------------------------------------------------------------------------
# Timbres: each renders one note of `n` samples (gate + release) at `freq`, before the envelope.


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


def _pad(freq, n, sr, rng):
    partials = tuple((k, 1.0 / k ** 2) for k in range(1, 7))
    # A louder centre voice keeps the chorus beating shallow (no false onsets).
    return _additive(freq, n, sr, partials, voices=((-6.0, 0.35), (0.0, 1.0), (5.0, 0.35)))


def _organ(freq, n, sr, rng):
    drawbars = ((0.5, 0.4), (1, 1.0), (2, 0.5), (3, 0.25), (4, 0.15))
    return _additive(freq, n, sr, drawbars, tremolo=0.15)


def _flute(freq, n, sr, rng):
    return _additive(freq, n, sr, ((1, 1.0), (2, 0.12), (3, 0.04)), vibrato=0.004)


def _square(freq, n, sr, rng):
    odd = tuple((k, 1.0 / k) for k in range(1, 200, 2))  # band-limited by `_additive`
    return _additive(freq, n, sr, odd, voices=((-4.0, 1.0), (4.0, 1.0)))


def _bell(freq, n, sr, rng):
    """Two-operator FM with a decaying index: bright, inharmonic attack."""
    t = np.arange(n) / sr
    index = 3.0 * np.exp(-t / 0.25) + 0.4
    return np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 3.5 * freq * t))


def _plucked(freq, n, sr, rng, t60: float = 0.9):
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
    """ADSR envelope of `gate` samples (note held) followed by the release; peak 1."""
    a, d, r = (max(1, int(round(x * sr))) for x in (attack, decay, release))
    t = np.arange(gate)
    env = np.where(t < a, t / a, sustain + (1 - sustain) * np.exp(-(t - a) / (d / 4)))
    held = env[-1] if gate > 0 else 0.0
    tail = held * (1 - np.arange(1, r + 1) / r) ** 2
    return np.concatenate([env, tail])


def render_note(timbre: str, midi: float, duration: float, sr: int,
                rng: np.random.Generator, velocity: float = 1.0) -> np.ndarray:
    """One note: `duration` seconds held, plus the timbre's release."""
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
    """Light kick on every beat and a hi-hat on every 8th."""
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


def speed_word(bpm: float) -> str:
    return 'slow' if bpm < 100 else ('fast' if bpm >= 110 else 'moderate')


def caption(spec: ClipSpec) -> str:
    """E.g. "fast plucked rising arpeggio in A minor, 130 bpm, with light drums"."""
    text = (f"{speed_word(spec.bpm)} {TIMBRES[spec.timbre].words} {PATTERNS[spec.pattern]} "
            f"in {spec.key}, {spec.bpm} bpm")
    return text + (', with light drums' if spec.drums else '')


def clip_metadata(spec: ClipSpec, name: str) -> tp.Dict[str, tp.Any]:
    """Sidecar content: every field MusicInfo requires, plus the synth parameters under `synth`.

    `MusicDataset` (with its default `info_fields_required=True`) needs title, artist, key, bpm,
    genre, moods, keywords, description, name and instrument; it lowercases genre, name,
    instrument, key and the list entries when it reads them.
    """
    domain = DOMAIN_SPECS.get(spec.domain)
    moods = list(domain.moods) if domain is not None else []
    keywords = [speed_word(spec.bpm), *TIMBRES[spec.timbre].words.split(),
                *PATTERNS[spec.pattern].split(), spec.mode] + (['drums'] if spec.drums else [])
    return {
        'title': f'synthetic {spec.domain} clip {name}',
        'artist': ARTIST,
        'key': spec.key,
        'bpm': spec.bpm,
        'genre': domain.genre if domain is not None else '',
        'moods': moods,
        'keywords': keywords,
        'description': caption(spec),
        'name': name,
        'instrument': TIMBRES[spec.timbre].words,
        'synth': {
            'version': SYNTH_VERSION, 'domain': spec.domain, 'timbre': spec.timbre,
            'pattern': spec.pattern, 'tonic': spec.tonic, 'mode': spec.mode,
            'progression': list(spec.progression), 'drums': spec.drums, 'seed': spec.seed,
        },
    }


def _frames(wav: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[F, n_fft] frames of `wav` (zero-padded to at least one frame)."""
    wav = np.pad(wav, (0, max(0, n_fft - len(wav))))
    count = 1 + (len(wav) - n_fft) // hop
    return wav[np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]]


def onset_rate(wav: np.ndarray, sample_rate: int, threshold_db: float = 3.0) -> float:
    """Note onsets per second: peaks of the spectral flux in 24 log-spaced bands.

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
    """Sanity and domain statistics of a mono clip.

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


# --------------------------------------------------------------------------------------------
# Dataset


def split_sizes(num_clips: tp.Optional[int],
                splits: tp.Iterable[tp.Tuple[str, tp.Union[int, float]]] = DEFAULT_SPLITS
                ) -> tp.Dict[str, int]:
    """Clips per split. A float is a fraction of `num_clips` (at least 1 clip if > 0), an int an
    exact count; the first split ('train') gets what remains of `num_clips` after the others
    (or its own count when `num_clips` is None)."""
    splits = list(dict(splits).items())  # mapping or pairs
    if not splits:
        raise ValueError("No splits given.")
    sizes: tp.Dict[str, int] = {}
    for name, value in splits[1:]:
        if isinstance(value, bool) or value < 0:
            raise ValueError(f"Split {name!r}: size must be a count or a fraction >= 0, got {value!r}.")
        if isinstance(value, int):
            sizes[name] = value
        else:
            if num_clips is None:
                raise ValueError(f"Split {name!r} is a fraction ({value}) but num_clips is None.")
            sizes[name] = max(1, int(round(value * num_clips))) if value > 0 else 0
    first, value = splits[0]
    if num_clips is None:
        if not isinstance(value, int):
            raise ValueError(f"Split {first!r} is a fraction ({value}) but num_clips is None.")
        sizes[first] = value
    else:
        sizes[first] = num_clips - sum(sizes.values())
        if sizes[first] < 1:
            raise ValueError(f"{num_clips} clips leave none for {first!r} after {sizes}; "
                             f"ask for more clips or smaller splits.")
    return {name: sizes[name] for name, _ in splits}


def audio_meta_line(path: Path, duration: float, sample_rate: int) -> str:
    """One manifest line, as `audiocraft.data.audio_dataset.save_audio_meta` writes an `AudioMeta`
    (same keys in the same order; a test checks the bytes), without importing AudioCraft."""
    meta = {'path': str(path), 'duration': duration, 'sample_rate': sample_rate,
            'amplitude': None, 'weight': None, 'info_path': None}
    return json.dumps(meta) + '\n'


def write_dataset(out_dir: tp.Union[str, Path], domain: str, num_clips: tp.Optional[int] = 40,
                  duration: float = 8.0, sample_rate: int = 16000, seed: int = 0,
                  splits: tp.Iterable[tp.Tuple[str, tp.Union[int, float]]] = DEFAULT_SPLITS,
                  progress: tp.Optional[tp.Callable[[int, int], None]] = None
                  ) -> tp.Dict[str, Path]:
    """Render a domain's clips and write them in AudioCraft's dataset layout (see module doc).

    Args:
        out_dir: dataset root; audio goes to `out_dir/audio/<domain>`, manifests to
            `out_dir/egs/<domain>/<split>/data.jsonl`. Existing files of the same names are
            overwritten; an existing manifest is replaced, not appended to.
        domain: 'old' or 'new' (see `DOMAIN_SPECS`).
        num_clips: clips over all splits (None when every split size is a count).
        duration: seconds per clip.
        sample_rate: e.g. 16000 or 32000.
        seed: everything is a function of (seed, domain, split, clip index).
        splits: (name, size) pairs or a mapping; see `split_sizes`.
        progress: called as progress(done, total) after each clip.
    Returns:
        {split: folder holding its data.jsonl}, the value for `datasource.<split>`.
    """
    if domain not in DOMAIN_SPECS:
        raise ValueError(f"Unknown domain {domain!r}; expected one of {list(DOMAIN_SPECS)}.")
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"duration and sample_rate must be positive, got {duration}, {sample_rate}.")
    sizes = split_sizes(num_clips, splits)
    out_dir = Path(out_dir).expanduser().resolve()
    egs_root = out_dir / 'egs' / domain
    total, done = sum(sizes.values()), 0
    manifests: tp.Dict[str, Path] = {}
    for split, size in sizes.items():
        audio_dir = out_dir / 'audio' / domain / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        metas = []
        for index in range(size):
            name = f'{domain}_{split}_{index:04d}'
            spec = sample_clip_spec(domain, _rng(seed, domain, split, index))
            wav = render_clip(spec, duration, sample_rate)
            path = audio_dir / f'{name}.wav'
            soundfile.write(str(path), wav, sample_rate, subtype='PCM_16', format='WAV')
            with open(path.with_suffix('.json'), 'w', encoding='utf-8') as file:
                json.dump(clip_metadata(spec, name), file, indent=2, sort_keys=True)
                file.write('\n')
            metas.append(audio_meta_line(path, len(wav) / sample_rate, sample_rate))
            done += 1
            if progress is not None:
                progress(done, total)
        manifests[split] = egs_root / split
        manifests[split].mkdir(parents=True, exist_ok=True)
        with open(manifests[split] / 'data.jsonl', 'w', encoding='utf-8') as file:
            file.writelines(metas)
    params = {'version': SYNTH_VERSION, 'domain': domain, 'num_clips': total, 'splits': sizes,
              'duration': duration, 'sample_rate': sample_rate, 'seed': seed}
    with open(egs_root / 'synth.json', 'w', encoding='utf-8') as file:
        json.dump(params, file, indent=2, sort_keys=True)
        file.write('\n')
    return manifests


# --------------------------------------------------------------------------------------------
# Command line (`audiocraft-ext make-synth-data`)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `make-synth-data`, on `parser` (shared by the CLI and `main_synth`)."""
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--domain', choices=['old', 'new', 'both'], default='both',
                        help='which domain(s) to write (default: %(default)s)')
    parser.add_argument('--clips', type=int, default=40,
                        help='clips per domain over all splits (default: %(default)s)')
    parser.add_argument('--duration', type=float, default=8.0,
                        help='seconds per clip (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    parser.add_argument('--sample-rate', type=int, default=16000,
                        help='sample rate in Hz (default: %(default)s)')
    for name, fraction in DEFAULT_SPLITS[1:]:
        parser.add_argument(f'--{name}', type=float, default=fraction, metavar='N',
                            help=f'{name} split: a fraction below 1 or a count of clips '
                                 f'(default: {fraction}); train gets the rest')
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Write the dataset(s) described by parsed `add_arguments` options; prints progress."""
    splits: tp.List[tp.Tuple[str, tp.Union[int, float]]] = [('train', 1.0)]
    for name, _ in DEFAULT_SPLITS[1:]:
        value = getattr(args, name)
        splits.append((name, int(value) if value >= 1 else float(value)))
    domains = list(DOMAINS) if args.domain == 'both' else [args.domain]
    for domain in domains:
        def progress(done: int, total: int, domain: str = domain) -> None:
            end = '\n' if done == total else '\r'
            print(f"[{domain}] rendered {done}/{total} clips", end=end, flush=True)

        manifests = write_dataset(args.out, domain, args.clips, args.duration, args.sample_rate,
                                  args.seed, splits, progress=progress)
        sizes = split_sizes(args.clips, splits)
        counts = ', '.join(f"{split} {sizes[split]}" for split in manifests)
        root = Path(args.out).expanduser().resolve() / 'egs' / domain
        print(f"[{domain}] {counts} -> train with: dset=audio/egs egs_root={root}")
    return 0


def main_synth(argv: tp.Optional[tp.List[str]] = None) -> int:
    """`python -m audiocraft_ext.data.synth --out DIR [--domain old|new|both] ...`."""
    parser = add_arguments(argparse.ArgumentParser(
        prog='make-synth-data', description='Write the synthetic two-domain captioned music '
                                            'dataset in AudioCraft\'s layout.'))
    return run_synth(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main_synth())
