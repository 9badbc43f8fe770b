"""The score set: real public-domain music, in two domains a listener tells apart.

=========  ========================================  =========================================
           ``old`` (what the base learns)            ``new`` (what the extension adapts to)
=========  ========================================  =========================================
music      Bach's four-part chorales (music21's      Irish dance tunes from O'Neill's *Music of
           corpus 'bach', MusicXML)                  Ireland* (1850; music21's 'oneills1850',
                                                     ABC): reels, jigs, slip jigs, hornpipes
texture    four voices, chords on every beat         one melody line, running eighth notes
tempo      60-80 quarter notes a minute              reels 92-108 half notes, hornpipes 72-84,
                                                     jigs and slip jigs 104-120 dotted quarters
sound      church organ or string ensemble           fiddle or flute
=========  ========================================  =========================================

scripts/make_score_set.py picks the pieces with music21 once and ships them as small MIDI files
with `scores.json` (``audiocraft_ext/data/scores/{old,new}/*.mid``); `score_dataset` renders
excerpts of them with FluidSynth. Every caption comes from the piece's own score and what the
recipe chose for it: its style, the mode of its key and its instrument ("Bach chorale in a minor
key, church organ", "Irish reel in a major key, fiddle"), the words a look-up-table text
conditioner (the tiny base's: it hashes whole captions, `conditioners.description.model: lut`)
can learn from a few hundred clips and meet again in held-out captions: 4 captions in ``old``,
16 in ``new``. The exact key, meter and tempo are in every clip's metadata (`key`, `bpm`,
`score`) and in `detailed_caption` ("Irish reel in D major, 2/2, 100 bpm, fiddle"), the form
`score_dataset` gives clips of a user's own MIDI folder. A bpm counts the meter's beat
(`midi_file.beat_quarters`): the half note in 2/2, the quarter in 4/4, 3/4 and 2/4, the dotted
quarter in 6/8 and 9/8.
"""
from dataclasses import dataclass
import json
from pathlib import Path
import typing as tp

SCORE_SET_VERSION = 1  # of the shipped MIDI files and scores.json; part of the demo's data key
SCORES_DIR = Path(__file__).resolve().parent / 'scores'
DOMAINS = ('old', 'new')


@dataclass(frozen=True)
class Style:
    """A kind of piece: its caption words and the tempi (in the meter's beats) the recipe draws."""
    words: str
    tempi: tp.Tuple[int, ...]


@dataclass(frozen=True)
class ScoreDomain:
    """One domain of the score set: where its pieces come from and how they are played.

    Args:
        name: 'old' or 'new'.
        corpus: music21 corpus folder the recipe reads.
        styles: {(rhythm, meter): Style}, the only kinds of piece taken (rhythm as the score
            says it, e.g. 'reel' from an ABC R: field; 'chorale' for Bach).
        instruments: (GM program, caption name) pairs, one drawn per piece.
        articulation: fraction of each written note that sounds (below 1: detached, like bowing).
        artist, genre, moods: sidecar metadata.
    """
    name: str
    corpus: str
    styles: tp.Dict[tp.Tuple[str, str], Style]
    instruments: tp.Tuple[tp.Tuple[int, str], ...]
    articulation: float
    artist: str
    genre: str
    moods: tp.Tuple[str, ...]


CHORALE_TEMPI = tuple(range(60, 81, 4))
SCORE_DOMAINS: tp.Dict[str, ScoreDomain] = {
    'old': ScoreDomain(
        name='old', corpus='bach',
        styles={('chorale', '4/4'): Style('Bach chorale', CHORALE_TEMPI),
                ('chorale', '3/4'): Style('Bach chorale', CHORALE_TEMPI)},
        instruments=((19, 'church organ'), (48, 'string ensemble')), articulation=1.0,
        artist='Johann Sebastian Bach', genre='baroque', moods=('solemn', 'calm')),
    'new': ScoreDomain(
        name='new', corpus='oneills1850',
        styles={('reel', '2/2'): Style('Irish reel', tuple(range(92, 109, 4))),
                ('hornpipe', '2/2'): Style('Irish hornpipe', tuple(range(72, 85, 4))),
                ('hornpipe', '2/4'): Style('Irish hornpipe', tuple(range(72, 85, 4))),
                ('jig', '6/8'): Style('Irish jig', tuple(range(104, 121, 4))),
                ('double jig', '6/8'): Style('Irish jig', tuple(range(104, 121, 4))),
                ('slip jig', '9/8'): Style('Irish slip jig', tuple(range(104, 121, 4))),
                ('slipjig', '9/8'): Style('Irish slip jig', tuple(range(104, 121, 4)))},
        instruments=((110, 'fiddle'), (73, 'flute')), articulation=0.9,
        artist="traditional (O'Neill's Music of Ireland, 1850)", genre='irish traditional',
        moods=('lively', 'dancing')),
}


@dataclass(frozen=True)
class Piece:
    """One entry of scores.json (see scripts/make_score_set.py for how each field is found)."""
    id: str
    domain: str
    source: str          # music21 corpus path, '#N' for tune N of an ABC collection
    title: str
    style: str           # caption words, e.g. 'Irish reel'
    key: str             # e.g. 'D major'
    meter: str           # e.g. '6/8'
    bpm: int             # beats of the meter a minute
    instrument: str
    program: int         # General MIDI, 0-127
    duration_s: float    # until the last note ends
    midi: str            # relative to the scores folder
    sha256: str          # of the MIDI file

    def caption(self) -> str:
        """E.g. "Irish jig in a major key, flute" (see the module's doc)."""
        return f"{self.style} in a {self.key.split()[-1]} key, {self.instrument}"

    def detailed_caption(self) -> str:
        return caption(self.style, self.key, self.meter, self.bpm, self.instrument)


def caption(style: str, key: tp.Optional[str], meter: str, bpm: float, instrument: tp.Optional[str]) -> str:
    """E.g. "Irish jig in G major, 6/8, 112 bpm, flute" (the key and instrument left out when unknown)."""
    text = style + (f' in {key}' if key else '') + f', {meter}, {round(bpm)} bpm'
    return text + (f', {instrument}' if instrument else '')


def load_score_set(folder: tp.Optional[tp.Union[str, Path]] = None) -> tp.Dict[str, tp.Any]:
    """scores.json of `folder` (default: the shipped set), with its pieces as `Piece`s under 'pieces'."""
    folder = Path(folder) if folder is not None else SCORES_DIR
    index = folder / 'scores.json'
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: the score set is missing from this installation "
                                f"(write it with scripts/make_score_set.py --out {folder}).")
    data = json.loads(index.read_text(encoding='utf-8'))
    data['pieces'] = [Piece(**piece) for piece in data['pieces']]
    return data
