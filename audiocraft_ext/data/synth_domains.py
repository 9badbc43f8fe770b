"""The synthetic dataset's two domains: what each renders, how a clip is drawn, its caption.

Every clip is a chord progression in one key, played in one pattern by one timbre at one tempo
(`synthesizer.render_clip`), and its caption says exactly that ("fast plucked rising arpeggio
in A minor, 130 bpm"). Two domains differ in everything a listener (and a spectrum) notices:

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

So the two domains differ by construction in onset rate and spectral centroid, and the tests
measure both (tests/synth_statistics.py) and assert that every new clip beats every old clip by a
margin. Over 40 clips of 8 s at 16 kHz (seed 0), min / median / max:

    onset rate (sharp onsets/s)   old 0.12 / 0.62 / 1.25     new 7.9 / 8.6 / 9.4
    spectral centroid (Hz)        old 176 / 247 / 469        new 764 / 1103 / 4481

(slow pad attacks hardly register as onsets, which is what they sound like). The caption
vocabulary is small on purpose (each domain has 3 x 3 x 4 x 3 = 108 timbre/pattern/key/tempo
combinations, twice that for ``new`` with and without drums) so that a model conditioned on
whole captions (AudioCraft's LUT conditioner with the ``noop`` tokenizer hashes the full string)
sees each caption more than once.

A clip is a function of (seed, domain, split, clip index) only (`keyed_rng`): changing the size
of one split does not change the clips of another.
"""
from dataclasses import dataclass
import typing as tp

import numpy as np

from .layout import keyed_rng  # noqa: F401 (the clips' generator; re-exported)
from .synthesizer import PATTERNS, TIMBRES, ClipSpec

SYNTH_VERSION = 1  # of what a (seed, domain, split, index) renders; in every sidecar and synth.json
DOMAINS = ('old', 'new')
ARTIST = 'audiocraft-ext synth'
# Chord progressions as scale degrees (0 = tonic), one chord per bar, cycled.
PROGRESSIONS = {
    'major': ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4)),  # I-V-vi-IV, I-IV-V-I, ...
    'minor': ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2)),  # i-VI-III-VII, i-iv-v-i, ...
}


@dataclass(frozen=True)
class DomainSpec:
    """What a domain may render; each clip draws one value of each field.

    Args:
        name: domain name, written in the sidecars and file names.
        timbres: names from `synthesizer.TIMBRES`.
        patterns: names from `synthesizer.PATTERNS`.
        mode: 'major' or 'minor'.
        tonics: tonic note names from `synthesizer.NOTE_NAMES`.
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


def speed_word(bpm: float) -> str:
    """The caption's word for a tempo in beats per minute."""
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

