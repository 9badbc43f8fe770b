"""The `audiocraft-ext` command.

Subcommands:
    demo    generate two short clips with a tiny, randomly initialised MusicGen (no download).

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
    return parser


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
