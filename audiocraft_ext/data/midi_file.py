"""Standard MIDI files, written and read with the standard library only.

`midi_bytes` writes what the score set ships (scripts/make_score_set.py builds the notes with
music21, this module turns them into bytes, so the bytes do not depend on how music21 writes
MIDI): a format-1 file with a conductor track (title, time signature, key signature, one tempo)
and one track per part (name, program change, notes).

`read_midi` reads any MIDI file a user hands `score_dataset.write_score_dataset(midi_dir=...)`
into what the writer needs: every note in seconds (through the tempo map), the first tempo,
time and key signatures, and the program each channel plays. Without those meta events the
file means what the MIDI standard says: 120 quarter notes a minute, 4/4, key unknown.
"""
from dataclasses import dataclass, field
from pathlib import Path
import struct
import typing as tp

TICKS_PER_QUARTER = 480
DRUM_CHANNEL = 9  # channel 10, counted from 1
# General MIDI program names, programs 0-127 (the standard's numbers count from 1).
GM_PROGRAMS = (
    'acoustic grand piano', 'bright acoustic piano', 'electric grand piano', 'honky-tonk piano',
    'electric piano', 'electric piano', 'harpsichord', 'clavinet',
    'celesta', 'glockenspiel', 'music box', 'vibraphone', 'marimba', 'xylophone', 'tubular bells',
    'dulcimer',
    'drawbar organ', 'percussive organ', 'rock organ', 'church organ', 'reed organ', 'accordion',
    'harmonica', 'tango accordion',
    'nylon guitar', 'steel guitar', 'jazz guitar', 'clean electric guitar', 'muted electric guitar',
    'overdriven guitar', 'distortion guitar', 'guitar harmonics',
    'acoustic bass', 'fingered bass', 'picked bass', 'fretless bass', 'slap bass', 'slap bass',
    'synth bass', 'synth bass',
    'violin', 'viola', 'cello', 'contrabass', 'tremolo strings', 'pizzicato strings',
    'orchestral harp', 'timpani',
    'string ensemble', 'slow string ensemble', 'synth strings', 'synth strings', 'choir',
    'voice oohs', 'synth voice', 'orchestra hit',
    'trumpet', 'trombone', 'tuba', 'muted trumpet', 'french horn', 'brass section', 'synth brass',
    'synth brass',
    'soprano sax', 'alto sax', 'tenor sax', 'baritone sax', 'oboe', 'english horn', 'bassoon',
    'clarinet',
    'piccolo', 'flute', 'recorder', 'pan flute', 'blown bottle', 'shakuhachi', 'whistle', 'ocarina',
    'square lead', 'sawtooth lead', 'calliope lead', 'chiff lead', 'charang lead', 'voice lead',
    'fifths lead', 'bass lead',
    'new age pad', 'warm pad', 'polysynth pad', 'choir pad', 'bowed pad', 'metallic pad', 'halo pad',
    'sweep pad',
    'rain', 'soundtrack', 'crystal', 'atmosphere', 'brightness', 'goblins', 'echoes', 'sci-fi',
    'sitar', 'banjo', 'shamisen', 'koto', 'kalimba', 'bagpipe', 'fiddle', 'shanai',
    'tinkle bell', 'agogo', 'steel drums', 'woodblock', 'taiko drum', 'melodic tom', 'synth drum',
    'reverse cymbal',
    'guitar fret noise', 'breath noise', 'seashore', 'bird tweet', 'telephone ring', 'helicopter',
    'applause', 'gunshot',
)
assert len(GM_PROGRAMS) == 128
SHARP_KEYS = ('C', 'G', 'D', 'A', 'E', 'B', 'F#', 'C#')        # major keys by number of sharps
FLAT_KEYS = ('C', 'F', 'Bb', 'Eb', 'Ab', 'Db', 'Gb', 'Cb')      # ... of flats
MINOR_SHARP_KEYS = ('A', 'E', 'B', 'F#', 'C#', 'G#', 'D#', 'A#')
MINOR_FLAT_KEYS = ('A', 'D', 'G', 'C', 'F', 'Bb', 'Eb', 'Ab')


class MidiFileError(ValueError):
    """A file is not a MIDI file this module can read; the message names it and says why."""


@dataclass(frozen=True)
class Note:
    """A note in ticks: sounding from `start` to `end` (exclusive)."""
    start: int
    end: int
    pitch: int
    velocity: int = 80


@dataclass
class Part:
    """One track of `midi_bytes`: a name, the GM program it plays and its notes, on one channel."""
    name: str
    program: int
    channel: int
    notes: tp.List[Note] = field(default_factory=list)


def key_name(sharps: int, minor: bool) -> str:
    """'D major', 'E minor', 'Bb major' from a key signature (-7..7 sharps, minor flag)."""
    if not -7 <= sharps <= 7:
        raise ValueError(f"A key signature has -7 to 7 sharps, got {sharps}.")
    if minor:
        tonic = MINOR_SHARP_KEYS[sharps] if sharps >= 0 else MINOR_FLAT_KEYS[-sharps]
    else:
        tonic = SHARP_KEYS[sharps] if sharps >= 0 else FLAT_KEYS[-sharps]
    return f"{tonic} {'minor' if minor else 'major'}"


def beat_quarters(numerator: int, denominator: int) -> float:
    """Quarter notes in one beat of a meter: a dotted quarter in compound meters (6/8, 9/8, 12/8),
    else the denominator's note (a half in 2/2, a quarter in 4/4 and 3/4)."""
    compound = denominator >= 8 and numerator % 3 == 0 and numerator > 3
    return (4.0 / denominator) * (3 if compound else 1)


def _vlq(value: int) -> bytes:
    """A variable-length quantity (7 bits a byte, high bit set on all but the last)."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _meta(kind: int, data: bytes) -> bytes:
    return bytes([0xFF, kind]) + _vlq(len(data)) + data


def _track(events: tp.List[tp.Tuple[int, int, bytes]]) -> bytes:
    """A track chunk from (tick, order, event bytes); events of one tick sort by `order`."""
    body, now = bytearray(), 0
    for tick, _, data in sorted(events, key=lambda event: (event[0], event[1])):
        body += _vlq(tick - now) + data
        now = tick
    body += _vlq(0) + _meta(0x2F, b'')
    return b'MTrk' + struct.pack('>I', len(body)) + bytes(body)


def midi_bytes(parts: tp.Sequence[Part], qpm: float, time_signature: tp.Tuple[int, int] = (4, 4),
               key_signature: tp.Optional[tp.Tuple[int, bool]] = None, title: str = '',
               ticks_per_quarter: int = TICKS_PER_QUARTER) -> bytes:
    """A format-1 standard MIDI file: a conductor track, then one track per part.

    Args:
        parts: the tracks; at one tick a note ends before the next one starts, so repeated
            notes are struck again.
        qpm: quarter notes per minute (one tempo for the whole file).
        time_signature: (numerator, denominator), e.g. (6, 8).
        key_signature: (sharps, minor), e.g. (-1, True) for D minor, or None.
        title: the conductor track's name.
        ticks_per_quarter: the file's time division.
    """
    numerator, denominator = time_signature
    if denominator & (denominator - 1) or denominator < 1:
        raise ValueError(f"A time signature's denominator is a power of 2, got {denominator}.")
    conductor = [(0, 0, _meta(0x03, title.encode('utf-8'))),
                 (0, 1, _meta(0x58, bytes([numerator, denominator.bit_length() - 1, 24, 8]))),
                 (0, 3, _meta(0x51, struct.pack('>I', round(60_000_000 / qpm))[1:]))]
    if key_signature is not None:
        sharps, minor = key_signature
        conductor.append((0, 2, _meta(0x59, struct.pack('>bB', sharps, int(minor)))))
    tracks = [_track(conductor)]
    for part in parts:
        channel = part.channel & 0x0F
        events = [(0, 0, _meta(0x03, part.name.encode('utf-8'))),
                  (0, 1, bytes([0xC0 | channel, part.program & 0x7F]))]
        for note in part.notes:
            if note.end <= note.start:
                continue
            events.append((note.start, 3, bytes([0x90 | channel, note.pitch & 0x7F, max(1, min(127, note.velocity))])))
            events.append((note.end, 2, bytes([0x80 | channel, note.pitch & 0x7F, 0])))
        tracks.append(_track(events))
    header = b'MThd' + struct.pack('>IHHH', 6, 1, len(tracks), ticks_per_quarter)
    return header + b''.join(tracks)


@dataclass
class MidiSummary:
    """What `read_midi` finds in a file.

    Attributes:
        notes: (start_s, end_s, channel, pitch) of every note, in start order.
        duration_s: when the last note ends (0 without notes).
        qpm: the first tempo, in quarter notes per minute (120 if the file sets none).
        time_signature: the first (numerator, denominator) (4/4 if none).
        key_signature: the first (sharps, minor), or None.
        programs: {channel: the first program it is set to}; channels without one play 0.
        title: the name of the first track, if it has one.
    """
    notes: tp.List[tp.Tuple[float, float, int, int]]
    duration_s: float
    qpm: float = 120.0
    time_signature: tp.Tuple[int, int] = (4, 4)
    key_signature: tp.Optional[tp.Tuple[int, bool]] = None
    programs: tp.Dict[int, int] = field(default_factory=dict)
    title: tp.Optional[str] = None

    @property
    def bpm(self) -> float:
        """Beats per minute, a beat being the meter's (`beat_quarters`)."""
        return self.qpm / beat_quarters(*self.time_signature)

    @property
    def key(self) -> tp.Optional[str]:
        return key_name(*self.key_signature) if self.key_signature is not None else None

    @property
    def meter(self) -> str:
        return f'{self.time_signature[0]}/{self.time_signature[1]}'

    def main_program(self) -> tp.Optional[int]:
        """The GM program of the channel with the most notes (drums, channel 10, left out);
        None when only drums play."""
        counts: tp.Dict[int, int] = {}
        for _, _, channel, _ in self.notes:
            if channel != DRUM_CHANNEL:
                counts[channel] = counts.get(channel, 0) + 1
        if not counts:
            return None
        channel = min(counts, key=lambda ch: (-counts[ch], ch))
        return self.programs.get(channel, 0)


def _chunks(data: bytes, path: Path) -> tp.Iterator[tp.Tuple[bytes, bytes]]:
    position = 0
    while position + 8 <= len(data):
        kind, length = data[position:position + 4], struct.unpack('>I', data[position + 4:position + 8])[0]
        if position + 8 + length > len(data):
            raise MidiFileError(f"{path} is not a readable MIDI file: its {kind!r} chunk is truncated.")
        yield kind, data[position + 8:position + 8 + length]
        position += 8 + length


def _read_vlq(data: bytes, position: int) -> tp.Tuple[int, int]:
    value = 0
    for _ in range(4):
        byte = data[position]
        position += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, position
    raise ValueError('variable-length quantity longer than 4 bytes')


# Data bytes of each channel message kind (status >> 4).
_DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}


def _track_events(track: bytes) -> tp.Iterator[tp.Tuple[int, int, bytes]]:
    """(absolute tick, status, data) of a track's events; meta events have status 0xFF and data
    = kind byte + payload."""
    position, tick, running = 0, 0, None
    while position < len(track):
        delta, position = _read_vlq(track, position)
        tick += delta
        status = track[position]
        if status == 0xFF:
            kind = track[position + 1]
            length, position = _read_vlq(track, position + 2)
            yield tick, 0xFF, bytes([kind]) + track[position:position + length]
            position += length
            if kind == 0x2F:
                return
        elif status in (0xF0, 0xF7):
            length, position = _read_vlq(track, position + 1)
            position += length
        else:
            if status & 0x80:
                running = status
                position += 1
            elif running is None:
                raise ValueError('data byte without a status byte')
            size = _DATA_BYTES[running >> 4]
            if position + size > len(track):
                raise ValueError('truncated event')
            yield tick, running, track[position:position + size]
            position += size


def read_midi(path: tp.Union[str, Path]) -> MidiSummary:
    """Read a standard MIDI file (format 0 or 1) into a `MidiSummary`.

    Raises:
        MidiFileError: not a MIDI file, truncated, or events this reader cannot parse.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b'MThd':
        raise MidiFileError(f"{path} is not a MIDI file (it does not start with MThd).")
    chunks = list(_chunks(data, path))
    header = chunks[0][1]
    if len(header) < 6:
        raise MidiFileError(f"{path} is not a readable MIDI file: its header is truncated.")
    _, _, division = struct.unpack('>HHH', header[:6])
    events: tp.List[tp.Tuple[int, int, int, int, bytes]] = []  # tick, track, index, status, data
    track_names: tp.Dict[int, str] = {}
    try:
        for number, (_, track) in enumerate(chunk for chunk in chunks[1:] if chunk[0] == b'MTrk'):
            for index, (tick, status, payload) in enumerate(_track_events(track)):
                events.append((tick, number, index, status, payload))
                if status == 0xFF and payload[0] == 0x03 and number not in track_names:
                    track_names[number] = payload[1:].decode('utf-8', errors='replace').strip()
    except (ValueError, IndexError, KeyError) as error:
        raise MidiFileError(f"{path} is not a readable MIDI file ({error or type(error).__name__}).") from None
    events.sort(key=lambda event: event[:3])
    if division & 0x8000:  # SMPTE: frames per second x ticks per frame
        fps = 256 - (division >> 8)
        seconds_per_tick_of = lambda tempo: 1.0 / (fps * (division & 0xFF))  # noqa: E731
    else:
        seconds_per_tick_of = lambda tempo: tempo / 1e6 / division  # noqa: E731

    summary = MidiSummary(notes=[], duration_s=0.0)
    tempo, first_tempo = 500_000, None
    time_signature = key_signature = None
    last_tick, now = 0, 0.0
    sounding: tp.Dict[tp.Tuple[int, int], tp.List[float]] = {}
    for tick, _, _, status, payload in events:
        now += (tick - last_tick) * seconds_per_tick_of(tempo)
        last_tick = tick
        if status == 0xFF:
            kind, body = payload[0], payload[1:]
            if kind == 0x51 and len(body) == 3:
                tempo = int.from_bytes(body, 'big') or tempo
                first_tempo = tempo if first_tempo is None else first_tempo
            elif kind == 0x58 and len(body) >= 2 and time_signature is None:
                time_signature = (body[0], 2 ** body[1])
            elif kind == 0x59 and len(body) == 2 and key_signature is None:
                key_signature = (struct.unpack('>b', body[:1])[0], bool(body[1]))
            continue
        kind, channel = status >> 4, status & 0x0F
        if kind == 0xC:
            summary.programs.setdefault(channel, payload[0])
        elif kind == 0x9 and payload[1] > 0:
            sounding.setdefault((channel, payload[0]), []).append(now)
        elif kind == 0x8 or kind == 0x9:
            starts = sounding.get((channel, payload[0]))
            if starts:
                summary.notes.append((starts.pop(0), now, channel, payload[0]))
    for (channel, pitch), starts in sounding.items():  # never released: they end with the file
        summary.notes.extend((start, now, channel, pitch) for start in starts)
    summary.notes.sort()
    summary.duration_s = max((end for _, end, _, _ in summary.notes), default=0.0)
    if first_tempo is not None:
        summary.qpm = 60e6 / first_tempo
    if time_signature is not None and time_signature[0] > 0:
        summary.time_signature = time_signature
    if key_signature is not None and -7 <= key_signature[0] <= 7:
        summary.key_signature = key_signature
    summary.title = track_names.get(0) or None
    return summary
