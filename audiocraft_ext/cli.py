"""The `audiocraft-ext` command.

Subcommands:
    demo          generate two short clips with a tiny, randomly initialised MusicGen (no download).
    prepare-data  write AudioCraft dataset manifests and sidecar metadata for training.
    export        turn a training run (dora sig or checkpoint) into a model file or AudioCraft layout.

Heavy imports (torch, audiocraft) happen inside the subcommands, so `audiocraft-ext --help`
answers at once.
"""
import argparse
from pathlib import Path
import sys
import typing as tp

DEMO_PROMPTS = [
    'a calm piano melody with soft strings',
    'an upbeat electronic track with punchy drums',
]


def _demo(args: argparse.Namespace) -> int:
    """Smoke generation: tiny text-to-music model, two prompts, WAV files in `args.out`."""
    import torch
    from audiocraft.data.audio import audio_write
    from audiocraft_ext.models.tiny import build_tiny_musicgen

    torch.manual_seed(args.seed)
    model = build_tiny_musicgen('text', seed=args.seed)
    model.set_generation_params(duration=args.duration)
    print(f"Model: {model.name} (random weights), sample rate {model.sample_rate} Hz, "
          f"{args.duration:g} s per clip.")
    with torch.no_grad():
        wavs = model.generate(DEMO_PROMPTS, progress=True)  # [B, C, T]
    print()  # AudioCraft's progress line ends with a carriage return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, (prompt, wav) in enumerate(zip(DEMO_PROMPTS, wavs)):
        path = audio_write(out / f'clip_{index}', wav.cpu(), model.sample_rate)
        print(f"Wrote {path} ({wav.shape[-1] / model.sample_rate:.2f} s): {prompt!r}")
    print(f"Done: {len(DEMO_PROMPTS)} clips in {out.resolve()}")
    return 0


def _prepare_data(args: argparse.Namespace) -> int:
    """Manifests for train/valid/evaluate/generate + sidecar .json metadata (see data.prepare)."""
    from audiocraft_ext.data.prepare import DataPreparationError, prepare_data, write_synthetic_audio
    captions = args.captions
    if args.synthetic:
        write_synthetic_audio(args.audio_dir, num_files=args.synthetic, duration=args.synthetic_duration,
                              seed=args.seed)
        captions = captions or str(Path(args.audio_dir) / 'captions.csv')
        print(f"Wrote {args.synthetic} synthetic tones to {args.audio_dir}")
    try:
        manifests = prepare_data(args.audio_dir, args.out, captions=captions, valid=args.valid,
                                 evaluate=args.evaluate, seed=args.seed,
                                 allow_missing_captions=args.allow_missing_captions)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, path in manifests.items():
        count = sum(1 for _ in open(path))
        print(f"{split:>9}: {count} files -> {path}")
    print(f"Train with: python -m audiocraft_ext.train solver=extended_musicgen dset=audio/egs "
          f"egs_root={args.out} pretrained_model_checkpoint=...")
    return 0


def _export(args: argparse.Namespace) -> int:
    """A training run (//sig/SIG, xp folder or checkpoint.th) -> ExtendedMusicGen file or AudioCraft dir."""
    from audiocraft_ext.solvers.xp_checkpoints import extended_from_solver_checkpoint
    source = args.source
    if not source.startswith('//') and not Path(source).exists() and '/' not in source:
        source = '//sig/' + source  # a bare dora signature
    model = extended_from_solver_checkpoint(source, state=args.state, device='cpu')
    if args.format == 'audiocraft':
        out = model.export_audiocraft(args.out)
        print(f"Wrote AudioCraft's layout to {out} (load with MusicGen.get_pretrained('{out}'))")
    else:
        out = model.save(args.out, include_base=not args.adapter_only)
        kind = 'adapter-only' if args.adapter_only else 'self-contained'
        print(f"Wrote {kind} {out} (load with ExtendedMusicGen.get_pretrained('{out}'))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='audiocraft-ext',
        description='Extend a frozen pretrained MusicGen with new trainable transformer layers.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    demo = commands.add_parser(
        'demo', help='generate two clips with a tiny random MusicGen (smoke test, no download)',
        description='Generate two short clips from text prompts with a tiny, randomly '
                    'initialised MusicGen built from AudioCraft classes. Nothing is downloaded; '
                    'the audio is noise-like, the point is to exercise the whole stack.')
    demo.add_argument('--out', default='./demo_out', help='output directory (default: %(default)s)')
    demo.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    demo.add_argument('--duration', type=float, default=1.0,
                      help='seconds of audio per clip (default: %(default)s)')
    demo.set_defaults(func=_demo)

    prepare = commands.add_parser(
        'prepare-data', help='write dataset manifests and sidecar metadata for training',
        description='Scan AUDIO_DIR for audio files, write a sidecar NAME.json (description, genre, '
                    'moods, keywords, ...) next to each from the captions CSV, and write the '
                    'train/valid/evaluate/generate manifests under --out (AudioCraft\'s jsonl format).')
    prepare.add_argument('audio_dir', help='folder of audio files (searched recursively)')
    prepare.add_argument('--out', required=True, help='dataset folder to write, e.g. egs/mydata')
    prepare.add_argument('--captions', help="CSV with columns 'file' and 'description' (optional: genre, "
                                            "moods, keywords, title, artist, key, bpm, instrument)")
    prepare.add_argument('--valid', type=float, default=0.1, help='fraction for valid (default: %(default)s)')
    prepare.add_argument('--evaluate', type=float, default=0.1,
                         help='fraction for evaluate, also used for generate (default: %(default)s)')
    prepare.add_argument('--seed', type=int, default=0, help='split seed (default: %(default)s)')
    prepare.add_argument('--allow-missing-captions', action='store_true',
                         help='train files without a caption with an empty description')
    prepare.add_argument('--synthetic', type=int, default=0, metavar='N',
                         help='first write N synthetic sine tones (with captions) into AUDIO_DIR')
    prepare.add_argument('--synthetic-duration', type=float, default=2.0, help=argparse.SUPPRESS)
    prepare.set_defaults(func=_prepare_data)

    export = commands.add_parser(
        'export', help='export a training run to a model file or to AudioCraft\'s layout',
        description='Export the extension trained by a run (dora signature, //sig/SIG, xp folder or '
                    'checkpoint.th) with its base.')
    export.add_argument('source', help='dora signature, //sig/SIG, xp folder or checkpoint.th')
    export.add_argument('out', help='output file (.pt) or, with --format audiocraft, a directory')
    export.add_argument('--format', choices=['extended', 'audiocraft'], default='extended',
                        help='extended: a file for ExtendedMusicGen.get_pretrained (default); audiocraft: '
                             'state_dict.bin + compression_state_dict.bin for stock MusicGen.get_pretrained')
    export.add_argument('--adapter-only', action='store_true',
                        help='only the new layers and a reference to the base (extended format)')
    export.add_argument('--state', choices=['best', 'last'], default='best',
                        help='best validation state (default) or last epoch')
    export.set_defaults(func=_export)
    return parser


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
