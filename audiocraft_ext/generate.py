"""`audiocraft-ext generate`: music from captions with a saved extended model, without writing Python.

    audiocraft-ext generate MODEL "caption" ["caption" ...] --duration S --out DIR
        [--scale 0.5] [--melody FILE | --continue FILE] [--seed N] [--device cuda] [--overwrite]
        [--attach NAME=EXTENSION ...] [--extensions NAME[,NAME ...]]

`--attach` adds other extensions of MODEL's base (`ExtendedMusicGen.attach`); `--extensions`
chooses, per caption or once for all, `own` (MODEL's own), an attached NAME, or `base` (the base
alone).

MODEL is anything `ExtendedMusicGen.get_pretrained` loads. For caption number i it writes
`DIR/<i>_<caption>.wav` and, beside it, `DIR/<i>_<caption>.json`: the caption, every setting, and
the command that generates that file again (caption i is generated with seed N + i).

Every input is checked before anything is generated: the values and files first (before the
model is even loaded), then what depends on the model (a melody needs a melody model). Existing
outputs are never replaced without `--overwrite`, and each file is written to a temporary name
in DIR and renamed, so an interrupted run leaves no half-written file.
"""
import argparse
from dataclasses import dataclass
import json
import math
import os
from pathlib import Path
import re
import shlex
import sys
import typing as tp

from . import __version__
from .io.atomic import atomic_path, atomic_write_text
from .io.errors import CheckpointError
from .models.extension_config import ExtensionConfig

MAX_SEED = 2 ** 32 - 1
# Peak-normalised (1 dB headroom), as the evaluation's samples and the demo's clips: loudness
# normalisation (AudioCraft's README) fails on clips shorter than its 0.4 s gate.
NORMALIZATION = {'strategy': 'peak'}


class GenerateError(ValueError):
    pass


@dataclass
class AudioInput:
    """A melody or continuation file, read as float32 [C, T]."""
    path: Path
    wav: tp.Any
    sample_rate: int


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('model', metavar='MODEL', help='a model written by ExtendedMusicGen.save (or '
                                                       'anything ExtendedMusicGen.get_pretrained loads)')
    parser.add_argument('captions', metavar='CAPTION', nargs='+', help='one WAV is written per caption')
    parser.add_argument('--duration', type=float, required=True, metavar='S', help='seconds of audio per caption')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder (created if needed)')
    parser.add_argument('--scale', type=float, metavar='X',
                        help="extension_scale: 0 = the frozen base, 1 = the new layers as trained, values in "
                             "between blend (default: the model's own, usually 1)")
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument('--melody', metavar='FILE', help='audio whose melody (chroma) conditions every '
                                                         'caption; needs a melody model')
    inputs.add_argument('--continue', dest='continuation', metavar='FILE',
                        help='audio to continue (shorter than --duration); the output starts with it')
    parser.add_argument('--seed', type=int, help='random seed; caption i uses seed + i (default: drawn at '
                                                 'random and written in the JSON files)')
    parser.add_argument('--device', help='cpu or cuda (default: cuda if available)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    parser.add_argument('--attach', action='append', default=[], metavar='NAME=EXTENSION',
                        help='another extension of the same base, under NAME (repeatable): a file, a '
                             'directory, a Hugging Face id or a training run')
    parser.add_argument('--extensions', metavar='NAME[,NAME...]',
                        help=f"which extension generates each caption: '{OWN}' (MODEL's, the default), an "
                             f"attached NAME or '{BASE}' (the base alone); one name for all, or one per caption")
    return parser


OWN, BASE = 'own', 'base'  # the --extensions names of MODEL's own extension and of the base alone


# --attach's {name: source} and the --extensions name of each caption
Extensions = tp.Tuple[tp.Dict[str, str], tp.List[str]]


def check_extensions(args: argparse.Namespace) -> Extensions:
    """--attach and --extensions, checked against the captions (before the model is loaded)."""
    attached: tp.Dict[str, str] = {}
    for entry in args.attach:
        name, _, source = entry.partition('=')
        if not name.isidentifier() or not source.strip() or name in (OWN, BASE):
            raise GenerateError(f"--attach {entry}: give NAME=EXTENSION, NAME a Python identifier other than "
                                f"'{OWN}' and '{BASE}' (e.g. --attach lofi=lofi.safetensors).")
        if name in attached:
            raise GenerateError(f"--attach {name} is given twice: one extension per name.")
        attached[name] = source
    names = (args.extensions or OWN).split(',')
    if len(names) == 1:
        names = names * len(args.captions)
    if len(names) != len(args.captions):
        raise GenerateError(f"--extensions names {len(names)} extensions for {len(args.captions)} captions: give "
                            "one per caption, or one for all.")
    unknown = sorted({name for name in names if name not in (OWN, BASE, *attached)})
    if unknown:
        raise GenerateError(f"--extensions {','.join(unknown)}: no such extension; use '{OWN}', '{BASE}' or a "
                            f"name given with --attach ({', '.join(attached) or 'none given'}).")
    return attached, names


# ---- checks before loading the model --------------------------------------------------------

def output_stems(captions: tp.Sequence[str]) -> tp.List[str]:
    """File names (without suffix) for the captions: '000_calm-piano', '001_fast-drums', ..."""
    slugs = [re.sub(r'[^a-z0-9]+', '-', caption.lower()).strip('-')[:48] or 'caption' for caption in captions]
    return [f'{index:03d}_{slug}' for index, slug in enumerate(slugs)]


def read_audio_input(option: str, value: str) -> AudioInput:
    """A --melody / --continue file: it exists, is audio libsndfile reads, mono or stereo, finite."""
    import numpy as np
    import soundfile
    path = Path(value).expanduser()
    if not path.is_file():
        what = 'is a directory' if path.is_dir() else 'does not exist'
        raise GenerateError(f"{option} {value} {what}: give an audio file.")
    try:
        data, sample_rate = soundfile.read(str(path), dtype='float32', always_2d=True)  # [T, C]
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise GenerateError(f"{option} {value} is not readable audio ({error}): give a WAV, FLAC, OGG or MP3 "
                            "file.") from None
    if data.shape[0] == 0:
        raise GenerateError(f"{option} {value} holds no samples: give a non-empty audio file.")
    if data.shape[1] not in (1, 2):
        raise GenerateError(f"{option} {value} has {data.shape[1]} channels: give a mono or stereo file.")
    if not np.isfinite(data).all():
        raise GenerateError(f"{option} {value} contains NaN or infinite samples: clean the file first.")
    return AudioInput(path.resolve(), np.ascontiguousarray(data.T), sample_rate)


def check_request(args: argparse.Namespace) -> tp.Tuple[tp.List[Path], tp.Optional[AudioInput], Extensions]:
    """Everything that can be checked without the model: (WAV paths to write, melody/continuation,
    `check_extensions`)."""
    for index, caption in enumerate(args.captions):
        if not caption.strip():
            raise GenerateError(f"Caption {index + 1} is empty: describe the music to generate.")
    if not math.isfinite(args.duration) or args.duration <= 0:
        raise GenerateError(f"--duration {args.duration:g} is not a positive number of seconds.")
    if args.scale is not None:
        try:
            ExtensionConfig(extension_scale=args.scale)
        except ValueError as error:
            raise GenerateError(f"--scale: {error}") from None
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise GenerateError(f"--seed {args.seed} is out of range: use an integer from 0 to {MAX_SEED}.")
    extensions = check_extensions(args)
    audio = None
    if args.melody is not None:
        audio = read_audio_input('--melody', args.melody)
    elif args.continuation is not None:
        audio = read_audio_input('--continue', args.continuation)
        seconds = audio.wav.shape[-1] / audio.sample_rate
        if seconds >= args.duration:
            raise GenerateError(f"--continue {args.continuation} lasts {seconds:.2f} s, not shorter than "
                                f"--duration {args.duration:g}: trim it or raise --duration.")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {args.out} is a file: give a folder.")
    wavs = [out / f'{stem}.wav' for stem in output_stems(args.captions)]
    existing = [p for wav in wavs for p in (wav, wav.with_suffix('.json')) if p.exists()]
    if existing and not args.overwrite:
        more = f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''
        raise GenerateError(f"{existing[0]} already exists{more}: choose another --out, or pass --overwrite "
                            "to replace it.")
    return wavs, audio, extensions


# ---- generation -----------------------------------------------------------------------------

def load_model(args: argparse.Namespace, audio: tp.Optional[AudioInput], attached: tp.Dict[str, str]):
    """The model with the requested settings; refuses a melody for a model without a melody conditioner."""
    from .models.extended_musicgen import ExtendedMusicGen
    try:
        model = ExtendedMusicGen.get_pretrained(args.model, device=args.device)
    except (FileNotFoundError, CheckpointError) as error:
        raise GenerateError(str(error)) from None
    if args.melody is not None and 'self_wav' not in model.lm.condition_provider.conditioners:
        raise GenerateError(f"--melody: {args.model} has no melody conditioner (a text-only base); use a model "
                            "extended from a melody base such as facebook/musicgen-melody, or drop --melody.")
    for name, source in attached.items():
        try:
            model.attach(name, source)
        except (FileNotFoundError, CheckpointError, ValueError, TypeError) as error:
            raise GenerateError(f"--attach {name}={source}: {error}") from None
    params = model.generation_params  # the loaded model's, kept: only duration and scale change
    model.set_generation_params(
        use_sampling=params['use_sampling'], top_k=params['top_k'], top_p=params['top_p'],
        temperature=params['temp'], cfg_coef=params['cfg_coef'], two_step_cfg=params['two_step_cfg'],
        duration=args.duration, extend_stride=model.extend_stride, extension_scale=args.scale)
    return model


def _generate_one(model, caption: str, audio: tp.Optional[AudioInput], args: argparse.Namespace, extension: str):
    """[C, T] audio for one caption by `extension` (an --extensions name); MusicGen's progress
    callback drives the bar."""
    import torch
    routes = [None if extension == BASE else model.OWN if extension == OWN else extension]
    if audio is None:
        return model.generate([caption], progress=True, extensions=routes)[0]
    wav = torch.from_numpy(audio.wav)[None]  # [1, C, T]
    if args.melody is not None:
        return model.generate_with_chroma([caption], wav, audio.sample_rate, progress=True, extensions=routes)[0]
    return model.generate_continuation(wav, audio.sample_rate, [caption], progress=True, extensions=routes)[0]


def regenerate_command(args: argparse.Namespace, caption: str, seed: int, scale: float, extension: str = OWN) -> str:
    """The command that generates exactly this caption's file again."""
    words = ['audiocraft-ext', 'generate', args.model, caption, '--duration', f'{args.duration:g}',
             '--scale', f'{scale:g}', '--seed', str(seed), '--out', args.out]
    if extension != OWN:
        words += [*(f'--attach={entry}' for entry in args.attach if entry.partition('=')[0] == extension),
                  '--extensions', extension]
    if args.melody is not None:
        words += ['--melody', args.melody]
    if args.continuation is not None:
        words += ['--continue', args.continuation]
    return shlex.join(words)


def _write_wav(wav, sample_rate: int, path: Path) -> None:
    from audiocraft.data.audio import audio_write
    with atomic_path(path) as tmp:
        audio_write(tmp, wav.cpu(), sample_rate, format='wav', add_suffix=False, **NORMALIZATION)


def run_generate(args: argparse.Namespace) -> int:
    """The `generate` command; returns the exit code (2 with one `error:` line for bad input)."""
    try:
        wavs, audio, (attached, extensions) = check_request(args)
        model = load_model(args, audio, attached)
    except GenerateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), 'little')  # <= MAX_SEED
    wavs[0].parent.mkdir(parents=True, exist_ok=True)
    total = len(args.captions)
    for index, (caption, path, extension) in enumerate(zip(args.captions, wavs, extensions)):
        short = caption if len(caption) <= 40 else caption[:39] + '…'
        with tqdm(desc=f'[{index + 1}/{total}] {short}', unit='step', file=sys.stderr) as bar:
            def progress(generated: int, steps: int) -> None:
                bar.total = steps
                bar.update(generated - bar.n)
            model.set_custom_progress_callback(progress)
            torch.manual_seed(seed + index)
            with torch.no_grad():
                wav = _generate_one(model, caption, audio, args, extension)  # [C, T]
        _write_wav(wav, model.sample_rate, path)
        settings = {
            'caption': caption, 'file': path.name, 'model': args.model,
            'base': {'reference': model.base_reference, 'hash': model.base_hash},
            'extension': {'name': extension, 'source': attached.get(extension, args.model if extension == OWN else None)},
            'extension_scale': model.extension_scale, 'duration': args.duration, 'seed': seed + index,
            'melody': str(audio.path) if args.melody is not None else None,
            'continue': str(audio.path) if args.continuation is not None else None,
            'sample_rate': model.sample_rate, 'channels': int(wav.shape[0]),
            'generation_params': model.generation_params, 'normalization': NORMALIZATION,
            'audiocraft_ext_version': __version__,
            'command': regenerate_command(args, caption, seed + index, model.extension_scale, extension),
        }
        atomic_write_text(path.with_suffix('.json'), json.dumps(settings, indent=2) + '\n')
        print(f"wrote {path}")
    return 0
