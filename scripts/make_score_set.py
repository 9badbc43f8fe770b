#!/usr/bin/env python3
"""Write the score set the demo renders: audiocraft_ext/data/scores/{old,new}/*.mid + scores.json.

Uses music21 (the `scores` extra: `uv sync --extra scores`, or `pip install music21==10.5.0`),
only here: its corpus ships inside its wheel, so nothing is downloaded. Parsing a chorale takes
a second or two, far too slow for the demo's cold start, hence this recipe runs once and its
output is committed.

    python scripts/make_score_set.py                 # 150 pieces per domain, seed 0 (a few minutes)
    python scripts/make_score_set.py --out /tmp/s --per-domain 5

What it does, per domain (audiocraft_ext/data/score_domains.py says what the domains are):

1. candidates: 'old', the four-part chorales of music21's 'bach' corpus (MusicXML); 'new', the
   dance tunes of O'Neill's 1850 collection whose ABC rhythm field (R:) and meter are one of the
   domain's styles (reel in 2/2, jig in 6/8, ...), each tune number once. Sorted, then shuffled
   with Python's `random` seeded by (seed, domain).
2. in that order, each candidate is parsed (repeats written out; a piece that fails to parse or
   to expand is skipped) and kept if it is of a known style and lasts 15 to 150 s at its tempo,
   until `--per-domain` are kept.
3. per piece, from a generator keyed on (seed, domain, piece id) only: a tempo among the
   style's and an instrument among the domain's, so one piece's choices do not depend on which
   others were picked (a test re-makes two shipped pieces and compares the bytes).
4. the key: among the key signature's major key and its relative minor, the one music21's
   Krumhansl-Schmuckler analysis ranks higher (a score without signature: the analysis' key).
5. the notes (ties merged, grace notes and chord symbols left out, the first note at time 0,
   velocity 64 + 32 x music21's beat strength) go through `midi_file.midi_bytes`: one track per
   voice, the chosen program, the tempo, time and key signatures.
"""
import argparse
from concurrent.futures import ProcessPoolExecutor
import hashlib
import json
from pathlib import Path
import random
import re
import sys
import typing as tp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audiocraft_ext.data.layout import keyed_rng  # noqa: E402
from audiocraft_ext.data.midi_file import TICKS_PER_QUARTER, Note, Part, beat_quarters, midi_bytes  # noqa: E402
from audiocraft_ext.data.score_domains import SCORE_DOMAINS, SCORE_SET_VERSION, SCORES_DIR  # noqa: E402

MIN_SECONDS, MAX_SECONDS = 15.0, 150.0


class Skip(Exception):
    """A candidate that does not make a piece (why in the message)."""


def corpus_root() -> Path:
    from music21 import corpus
    return Path(corpus.__file__).resolve().parent


def candidates(domain: str) -> tp.List[tp.Dict[str, tp.Any]]:
    """Every candidate of a domain, sorted by id: {'id', 'source', 'style' key, ...}."""
    spec = SCORE_DOMAINS[domain]
    root = corpus_root() / spec.corpus
    found = []
    if domain == 'old':
        for path in sorted(root.glob('bwv*.mxl')):
            found.append({'id': path.stem, 'source': f'{spec.corpus}/{path.name}', 'number': None, 'rhythm': 'chorale'})
    else:
        seen = set()
        for path in sorted(root.glob('*.abc')):
            for block in re.split(r'\n(?=X:)', path.read_text(encoding='utf-8', errors='replace')):
                number = re.search(r'^X:\s*(\d+)', block, re.M)
                rhythm = re.search(r'^R:\s*(.*?)\s*$', block, re.M)
                if not number or not rhythm or int(number.group(1)) in seen:
                    continue
                rhythm_name = rhythm.group(1).lower()
                if not any(rhythm_name == known for known, _ in spec.styles):
                    continue
                seen.add(int(number.group(1)))
                found.append({'id': f'oneills{int(number.group(1)):04d}', 'number': int(number.group(1)),
                              'source': f'{spec.corpus}/{path.name}#{int(number.group(1))}', 'rhythm': rhythm_name})
    return sorted(found, key=lambda item: item['id'])


def key_of(score) -> tp.Tuple[str, int, bool]:
    """('G minor', sharps, minor) for a score: the key signature's major or relative minor, the one
    the analysis ranks higher."""
    from music21 import key as m21key
    signature = score.recurse().getElementsByClass('KeySignature').first()
    analysed = score.analyze('key')
    ranked = [analysed] + list(analysed.alternateInterpretations)
    if signature is not None:
        allowed = {(k.tonic.name, k.mode) for k in (signature.asKey('major'), signature.asKey('minor'))}
        chosen = next((k for k in ranked if (k.tonic.name, k.mode) in allowed), signature.asKey('major'))
    else:
        chosen = next(k for k in ranked if k.mode in ('major', 'minor'))
    chosen = m21key.Key(chosen.tonic.name, chosen.mode)
    tonic = chosen.tonic.name.replace('-', 'b')
    return f'{tonic} {chosen.mode}', chosen.sharps, chosen.mode == 'minor'


def parse(domain: str, candidate: tp.Dict[str, tp.Any]):
    from music21 import corpus
    path = candidate['source'].split('#')[0]
    if candidate['number'] is not None:
        score = corpus.parse(path, number=candidate['number'])
    else:
        score = corpus.parse(path)
    try:
        score = score.expandRepeats()
    except Exception as error:  # music21 raises several kinds on repeats it cannot follow
        raise Skip(f'repeats: {error}') from None
    return score


def title_of(domain: str, candidate: tp.Dict[str, tp.Any], score) -> str:
    if domain == 'old':
        return 'Chorale BWV ' + candidate['id'][3:]
    return (score.metadata.title if score.metadata and score.metadata.title else candidate['id']).strip().rstrip('.').strip()


def make_piece(domain: str, candidate: tp.Dict[str, tp.Any], seed: int) -> tp.Tuple[bytes, tp.Dict[str, tp.Any]]:
    """(MIDI bytes, scores.json entry without the file fields) of one candidate, or `Skip`."""
    from music21 import harmony
    spec = SCORE_DOMAINS[domain]
    try:
        score = parse(domain, candidate)
    except Skip:
        raise
    except Exception as error:
        raise Skip(f'parse: {type(error).__name__}: {error}') from None
    parts = list(score.parts) if hasattr(score, 'parts') and len(score.parts) else [score]
    if domain == 'old' and len(parts) != 4:
        raise Skip(f'{len(parts)} parts, not 4 voices')
    signature = score.recurse().getElementsByClass('TimeSignature').first()
    if signature is None:
        raise Skip('no time signature')
    meter = signature.ratioString
    style = spec.styles.get((candidate['rhythm'], meter))
    if style is None:
        raise Skip(f"no style for {candidate['rhythm']} in {meter}")
    rng = keyed_rng(seed, domain, candidate['id'])
    bpm = int(style.tempi[int(rng.integers(len(style.tempi)))])
    program, instrument = spec.instruments[int(rng.integers(len(spec.instruments)))]
    qpm = bpm * beat_quarters(signature.numerator, signature.denominator)
    key, sharps, minor = key_of(score)

    voices = []
    for part in parts:
        notes = []
        flat = part.stripTies().flatten()
        for element in flat.notes:
            if isinstance(element, harmony.ChordSymbol) or element.duration.isGrace:
                continue
            length = float(element.duration.quarterLength)
            if length <= 0:
                continue
            start = float(element.getOffsetBySite(flat))
            strength = element.beatStrength if element.beatStrength is not None else 0.25
            velocity = 64 + int(round(32 * float(strength)))
            for pitch in element.pitches:
                notes.append((start, length, int(pitch.midi), velocity))
        voices.append(notes)
    if not any(voices):
        raise Skip('no notes')
    first = min(start for notes in voices for start, *_ in notes)
    midi_parts = []
    for channel, (part, notes) in enumerate(zip(parts, voices)):
        events = []
        for start, length, pitch, velocity in sorted(notes):
            begin = int(round((start - first) * TICKS_PER_QUARTER))
            end = begin + max(1, int(round(length * spec.articulation * TICKS_PER_QUARTER)))
            events.append(Note(begin, end, pitch, velocity))
        name = (part.partName or f'voice {channel + 1}') if domain == 'old' else instrument
        midi_parts.append(Part(name=str(name), program=program, channel=channel, notes=events))
    last = max(note.end for part in midi_parts for note in part.notes)
    duration_s = last / TICKS_PER_QUARTER * 60.0 / qpm
    if not MIN_SECONDS <= duration_s <= MAX_SECONDS:
        raise Skip(f'{duration_s:.1f} s at {bpm} bpm')
    title = title_of(domain, candidate, score)
    data = midi_bytes(midi_parts, qpm, (signature.numerator, signature.denominator), (sharps, minor), title)
    entry = {'id': candidate['id'], 'domain': domain, 'source': candidate['source'], 'title': title,
             'style': style.words, 'key': key, 'meter': meter, 'bpm': bpm, 'instrument': instrument,
             'program': program, 'duration_s': round(duration_s, 3)}
    return data, entry


def _try(job: tp.Tuple[str, tp.Dict[str, tp.Any], int]):
    domain, candidate, seed = job
    try:
        return make_piece(domain, candidate, seed)
    except Skip as skip:
        return str(skip)


def pick(domain: str, count: int, seed: int, jobs: int, log=print):
    """The first `count` candidates (in the seeded order) that make a piece."""
    order = candidates(domain)
    random.Random(f'{seed}/{domain}').shuffle(order)
    kept, skipped = [], 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        # In batches, so that no more than a batch is parsed past the last piece needed.
        for begin in range(0, len(order), 4 * jobs):
            batch = order[begin:begin + 4 * jobs]
            for candidate, result in zip(batch, pool.map(_try, [(domain, c, seed) for c in batch])):
                if len(kept) == count:
                    break
                if isinstance(result, str):
                    skipped += 1
                    log(f'  skip {candidate["id"]}: {result}')
                else:
                    kept.append(result)
            if len(kept) == count:
                break
    if len(kept) < count:
        raise SystemExit(f'{domain}: only {len(kept)} of {count} pieces could be made.')
    log(f'{domain}: {count} pieces ({skipped} candidates skipped)')
    return kept


def write(out: Path, pieces: tp.Dict[str, tp.List], seed: int) -> None:
    import music21
    entries = []
    for domain, kept in pieces.items():
        folder = out / domain
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob('*.mid'):
            stale.unlink()
        for data, entry in sorted(kept, key=lambda item: item[1]['id']):
            (folder / f"{entry['id']}.mid").write_bytes(data)
            entries.append({**entry, 'midi': f"{domain}/{entry['id']}.mid",
                            'sha256': hashlib.sha256(data).hexdigest()})
    index = {'version': SCORE_SET_VERSION, 'seed': seed, 'music21': music21.__version__,
             'recipe': 'scripts/make_score_set.py', 'pieces': entries}
    (out / 'scores.json').write_text(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + '\n',
                                     encoding='utf-8')


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=SCORES_DIR, help='default: %(default)s')
    parser.add_argument('--per-domain', type=int, default=150, help='pieces per domain (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--jobs', type=int, default=2, help='parsing processes (default: %(default)s)')
    args = parser.parse_args(argv)
    pieces = {domain: pick(domain, args.per_domain, args.seed, args.jobs) for domain in SCORE_DOMAINS}
    write(args.out, pieces, args.seed)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
