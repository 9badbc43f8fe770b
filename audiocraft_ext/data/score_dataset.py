"""Real music on disk: excerpts of scores, rendered with FluidSynth, in AudioCraft's layout.

`write_score_dataset` writes the same files as `synth_dataset.write_dataset` (see `layout`):
audio and sidecars under ``OUT/audio/<domain>/<split>/``, manifests under
``OUT/egs/<domain>/<split>/data.jsonl`` and the parameters in ``OUT/egs/<domain>/synth.json``
(FluidSynth is a synthesizer too). The clips are excerpts of

* the shipped score set (`score_domains`): Bach chorales for ``old``, Irish dance tunes for
  ``new``, captioned from their scores ("Irish reel in a major key, fiddle"; the exact key,
  meter and tempo in `detailed_caption`: "Irish reel in D major, 2/2, 100 bpm, fiddle"); or
* a folder of the user's own MIDI files (``midi_dir``; any domain name). Captions come from a
  ``captions.csv`` in that folder when it lists the file (the table `prepare-data` reads: a
  `file` column and a `description` column, optionally genre, moods, keywords, title, artist,
  key, bpm, instrument), else from the file itself: its name, then its first key signature,
  time signature and tempo, and the General MIDI instrument of its busiest channel ("my tune in
  D major, 3/4, 96 bpm, acoustic grand piano"; a file without those events is 4/4 at 120 as the
  MIDI standard says, and its key is left out).

Splits are by piece: the pieces (sorted by id) are dealt to the splits in proportion to their
clips (each split with clips gets at least one piece), so no piece is heard in two splits. The
deal depends on the domain and the split sizes, not on the seed: every seed holds out the same
pieces, so a base pretrained on the shipped ``train`` pieces never saw a demo's held-out ones. Clip
`index` of `split` plays piece ``order[index % len(pieces)]`` of its split, `order` a permutation
keyed on (seed, domain, split), from an offset drawn by a generator keyed on (seed, domain,
split, index) (10 ms steps, redrawn until a note starts in the excerpt). With the same FluidSynth
and SoundFont, the same arguments give byte-identical files on any machine; two FluidSynth
processes render at once (`workers`), the files are still written one by one, in order.

Only numpy, soundfile and the standard library are imported (and the `fluidsynth` command run).
"""
import math
from pathlib import Path
import re
import typing as tp

from .layout import DEFAULT_SPLITS, Splits, keyed_rng, write_domain
from .midi_file import DRUM_CHANNEL, GM_PROGRAMS, read_midi
from .midi_render import find_soundfont, fluidsynth_version, render_midi
from .prepare import METADATA_DEFAULTS, read_captions
from .score_domains import DOMAINS, SCORE_DOMAINS, SCORE_SET_VERSION, SCORES_DIR, caption, load_score_set
from .splits import deal, split_sizes

MIDI_EXTENSIONS = ('.mid', '.midi')
OFFSET_STEP = 0.01   # seconds: excerpt offsets are multiples of it
OFFSET_TRIES = 20


class ScoreSource(tp.NamedTuple):
    """A piece to cut clips from: its MIDI file, note onsets and the sidecar fields of its clips."""
    id: str
    midi: Path
    label: str                      # the MIDI file as written in sidecars (relative, portable)
    duration_s: float
    onsets: tp.Tuple[float, ...]
    metadata: tp.Dict[str, tp.Any]  # title, artist, key, bpm, genre, moods, keywords, description, instrument


def _shipped_sources(domain: str, folder: Path) -> tp.List[ScoreSource]:
    spec = SCORE_DOMAINS[domain]
    sources = []
    for piece in load_score_set(folder)['pieces']:
        if piece.domain != domain:
            continue
        midi = folder / piece.midi
        mode = piece.key.split()[-1]
        metadata = {
            'title': piece.title, 'artist': spec.artist, 'key': piece.key, 'bpm': piece.bpm,
            'genre': spec.genre, 'moods': list(spec.moods),
            'keywords': [*piece.style.lower().split(), mode, piece.meter, piece.instrument],
            'description': piece.caption(), 'detailed_caption': piece.detailed_caption(),
            'instrument': piece.instrument,
            'score': {'piece': piece.id, 'source': piece.source, 'midi': piece.midi, 'style': piece.style,
                      'meter': piece.meter, 'program': piece.program},
        }
        onsets = tuple(start for start, *_ in read_midi(midi).notes)
        sources.append(ScoreSource(piece.id, midi, piece.midi, piece.duration_s, onsets, metadata))
    return sources


def _title_from_name(path: Path) -> str:
    return re.sub(r'[\s_\-]+', ' ', path.stem).strip() or path.stem


def _folder_sources(midi_dir: Path) -> tp.List[ScoreSource]:
    files = sorted(p for p in midi_dir.rglob('*') if p.is_file() and p.suffix.lower() in MIDI_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"No MIDI files ({', '.join(MIDI_EXTENSIONS)}) under {midi_dir}.")
    table = midi_dir / 'captions.csv'
    captions = read_captions(table) if table.is_file() else {}
    sources = []
    for path in files:
        summary = read_midi(path)
        relative = path.relative_to(midi_dir).as_posix()
        program = summary.main_program()
        instrument = GM_PROGRAMS[program] if program is not None else ('drums' if summary.notes else None)
        title = summary.title or _title_from_name(path)
        metadata = dict(METADATA_DEFAULTS, title=title, key=summary.key or '', bpm=round(summary.bpm),
                        instrument=instrument or '', keywords=[w for w in (summary.meter, instrument) if w],
                        description=caption(_title_from_name(path), summary.key, summary.meter,
                                            summary.bpm, instrument))
        for key in (relative, path.name, relative.rsplit('.', 1)[0], path.stem):
            if key in captions:
                metadata.update({k: v for k, v in captions[key].items() if v not in ('', [])})
                break
        metadata.pop('name', None)
        metadata['score'] = {'piece': relative, 'midi': relative, 'meter': summary.meter,
                             'program': program}
        onsets = tuple(start for start, _, channel, _ in summary.notes)
        sources.append(ScoreSource(relative, path, relative, summary.duration_s, onsets, metadata))
    return sources


def _piece_counts(num_pieces: int, sizes: tp.Mapping[str, int]) -> tp.Dict[str, int]:
    """Pieces per split, in proportion to its clips; at least one for a split with clips."""
    names = list(sizes)
    total = sum(sizes.values())
    counts = {name: (max(1, math.floor(num_pieces * sizes[name] / total)) if sizes[name] else 0)
              for name in names[1:]}
    counts = {names[0]: num_pieces - sum(counts.values()), **counts}
    needed = sum(1 for size in sizes.values() if size)
    if num_pieces < needed or (sizes[names[0]] and counts[names[0]] < 1):
        raise ValueError(f"{num_pieces} piece(s) long enough for these clips cannot give each of the "
                         f"{needed} splits with clips its own piece: add MIDI files, or use shorter clips "
                         f"or fewer splits.")
    return counts


def _offset(source: ScoreSource, duration: float, rng) -> float:
    """An excerpt start in [first note, end - duration], in OFFSET_STEP steps, where a note starts."""
    first = source.onsets[0] if source.onsets else 0.0
    steps = max(0, int(math.floor((source.duration_s - duration - first) / OFFSET_STEP)))
    offset = first
    for _ in range(OFFSET_TRIES):
        offset = round(first + int(rng.integers(0, steps + 1)) * OFFSET_STEP, 6)
        if any(offset <= onset < offset + duration for onset in source.onsets):
            break
    return offset


def write_score_dataset(out_dir: tp.Union[str, Path], domain: str, num_clips: tp.Optional[int] = 40,
                        duration: float = 8.0, sample_rate: int = 16000, seed: int = 0,
                        splits: Splits = DEFAULT_SPLITS, midi_dir: tp.Optional[tp.Union[str, Path]] = None,
                        soundfont: tp.Optional[tp.Union[str, Path]] = None, workers: int = 2,
                        progress: tp.Optional[tp.Callable[[int, int], None]] = None,
                        scores_dir: tp.Optional[tp.Union[str, Path]] = None) -> tp.Dict[str, Path]:
    """Render excerpts of scores and write them in AudioCraft's dataset layout (see module doc).

    Args:
        out_dir: dataset root (as `synth_dataset.write_dataset`; files of the same names are replaced).
        domain: 'old' or 'new' for the shipped score set; with `midi_dir`, any name made of
            letters, digits, '-' and '_' (it names the folders and files).
        num_clips: clips over all splits (None when every split size is a count).
        duration: seconds per clip; only pieces at least that long are used.
        sample_rate: in Hz.
        seed: which piece and where each clip starts: a function of (seed, domain, split, clip
            index); the pieces of each split do not depend on it.
        splits: (name, size) pairs or a mapping; see `splits.split_sizes`.
        midi_dir: a folder of the user's MIDI files instead of the shipped score set.
        soundfont: a .sf2 file (default: `midi_render.find_soundfont`).
        workers: FluidSynth processes at once (2 suits a 2-core machine; 1 renders in turn).
        progress: called as progress(done, total) after each clip.
        scores_dir: another score set written by scripts/make_score_set.py (default: the shipped one).
    Returns:
        {split: folder holding its data.jsonl}.
    Raises:
        RendererNotFoundError: no fluidsynth or no SoundFont (before anything is written).
        MidiFileError: a file of `midi_dir` is not a readable MIDI file.
        ValueError: an unknown domain, too few pieces long enough for `duration`.
    """
    if midi_dir is None and domain not in DOMAINS:
        raise ValueError(f"Unknown domain {domain!r} of the score set; expected one of {list(DOMAINS)} "
                         f"(or pass midi_dir to render your own MIDI files).")
    if not re.fullmatch(r'[A-Za-z0-9_-]+', domain):
        raise ValueError(f"Domain {domain!r}: use letters, digits, '-' and '_' (it names folders and files).")
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"duration and sample_rate must be positive, got {duration}, {sample_rate}.")
    font = find_soundfont(soundfont)
    version = fluidsynth_version()
    sizes = split_sizes(num_clips, splits)
    if midi_dir is not None:
        midi_dir = Path(midi_dir).expanduser().resolve()
        if not midi_dir.is_dir():
            raise FileNotFoundError(f"MIDI folder not found: {midi_dir}.")
        sources = _folder_sources(midi_dir)
    else:
        sources = _shipped_sources(domain, Path(scores_dir) if scores_dir is not None else SCORES_DIR)
    usable = sorted((s for s in sources if s.duration_s >= duration and s.onsets), key=lambda s: s.id)
    if not usable:
        raise ValueError(f"None of the {len(sources)} piece(s) lasts {duration:g} s; use shorter clips.")
    dealt = deal(usable, _piece_counts(len(usable), sizes),
                 seed=int(keyed_rng(0, domain, 'deal').integers(2 ** 62)))
    orders = {split: keyed_rng(seed, domain, split, 'order').permutation(len(pieces))
              for split, pieces in dealt.items() if pieces}

    def make_clip(split: str, index: int, name: str):
        pieces = dealt[split]
        source = pieces[int(orders[split][index % len(pieces)])]
        start = _offset(source, duration, keyed_rng(seed, domain, split, index))
        wav = render_midi(source.midi, sample_rate, start, duration, soundfont=font)
        sidecar = {**source.metadata, 'name': name}
        sidecar['score'] = {**source.metadata['score'], 'version': SCORE_SET_VERSION, 'start_s': start}
        return wav, sidecar

    params = {'source': 'midi folder' if midi_dir is not None else 'score set',
              'score_set_version': SCORE_SET_VERSION, 'domain': domain, 'num_clips': sum(sizes.values()),
              'duration': duration, 'sample_rate': sample_rate, 'seed': seed,
              'pieces': {split: [s.id for s in pieces] for split, pieces in dealt.items()},
              'fluidsynth': version, 'soundfont': {'name': font.name, 'bytes': font.stat().st_size}}
    return write_domain(Path(out_dir).expanduser().resolve(), domain, sizes, make_clip, sample_rate,
                        params, workers=max(1, workers), progress=progress)
