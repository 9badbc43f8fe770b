"""Generation speed: ExtendedMusicGen vs its base MusicGen vs a stock MusicGen of L + N layers.

All three are measured in the same run, on the same prompts and duration, alternating runs so
that machine noise hits them alike. The limit for the extended model is the layer ratio
(L + N) / L over the base; the stock L + N layer model (the extended model exported with
`merged_musicgen`) is the direct baseline: same network, AudioCraft's own code. The extended
model with its base stored in float16 (`store_base_in`, a training-memory setting) shows what
that costs in generation: one conversion of each base layer's weights per generated step.

    python benchmarks/bench_generation.py            # CPU-sized (dim 256, 8 layers, N = 4)
    python benchmarks/bench_generation.py --dim 1024 --layers 24 --heads 16 --new-layers 12 \
        --card 2048 --device cuda                      # musicgen-small shapes on a GPU
"""
import argparse
import copy
import statistics

import torch

from audiocraft_ext import ExtendedMusicGen

from common import build_base, tokens_per_second


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--layers', type=int, default=8)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--new-layers', type=int, default=4)
    parser.add_argument('--card', type=int, default=2048)
    parser.add_argument('--duration', type=float, default=2.0, help='seconds of audio (50 tokens/s)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    return parser.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    base = build_base(args.dim, args.layers, args.heads, args.card, n_q=4, device=args.device)
    extended = ExtendedMusicGen.from_base(base, num_additional_layers=args.new_layers)
    stock = extended.merged_musicgen()
    half_base = ExtendedMusicGen.from_base(copy.deepcopy(base), num_additional_layers=args.new_layers)
    half_base.lm.store_base_in(torch.float16)
    models = {'base (L)': base, 'extended (L + N)': extended, 'stock L + N': stock,
              'extended, fp16 base': half_base}
    prompts = ['calm piano'] * args.batch
    for model in models.values():  # warm-up
        tokens_per_second(model, prompts, 0.2)
    speeds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            speeds[name].append(tokens_per_second(model, prompts, args.duration))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    limit = (args.layers + args.new_layers) / args.layers
    print(f"device={args.device} dim={args.dim} L={args.layers} N={args.new_layers} heads={args.heads} "
          f"card={args.card} batch={args.batch} duration={args.duration}s repeats={args.repeats}")
    print(f"{'model':<20}{'tokens/s':>10}{'slowdown vs base':>18}")
    for name, value in median.items():
        print(f"{name:<20}{value:>10.1f}{median['base (L)'] / value:>18.3f}")
    slowdown = median['base (L)'] / median['extended (L + N)']
    print(f"layer-ratio limit (L+N)/L = {limit:.3f}; extended slowdown / limit = {slowdown / limit:.3f}; "
          f"extended vs stock L+N = {median['stock L + N'] / median['extended (L + N)']:.3f}x time")
    print(f"float16 base: {median['extended (L + N)'] / median['extended, fp16 base']:.3f}x the extended model's time")


if __name__ == '__main__':
    main()
