"""Generation speed: ExtendedMusicGen vs its base MusicGen vs a stock MusicGen of L + N layers.

All three are measured in the same run, on the same prompts and duration, alternating runs so
that machine noise hits them alike. The limit for the extended model is the layer ratio
(L + N) / L over the base; the stock L + N layer model (the extended model exported with
`merged_musicgen`) is the direct baseline: same network, AudioCraft's own code. The extended
model with its base stored in float16 (`store_base_in`, a training-memory setting) shows what
that costs in generation: one conversion of each base layer's weights per generated step.

Weights are in `--dtype`: by default float16 on CUDA, as AudioCraft's loaders (and ours) load
MusicGen there, and float32 on CPU. Every model compared is in that dtype, the stock L + N layer
model too (`merged_musicgen` builds it in the loaders' dtype for the device). With float16
weights the fp16-base row is the extended model itself, and is left out.

    python benchmarks/bench_generation.py            # CPU-sized (dim 256, 8 layers, N = 4)
    python benchmarks/bench_generation.py --dim 1024 --layers 24 --heads 16 --new-layers 12 \
        --card 2048 --device cuda                      # musicgen-small shapes on a GPU
"""
import argparse
import copy
import json
import statistics
import typing as tp

import torch

from audiocraft_ext import ExtendedMusicGen

from common import DEFAULT_OUT, build_base, ensure_out, machine_description, tokens_per_second


def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
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
    parser.add_argument('--dtype', choices=['float32', 'float16'],
                        help='weights (default: float16 on CUDA, as AudioCraft loads MusicGen there; float32 on CPU)')
    parser.add_argument('--out', default=str(DEFAULT_OUT), help='folder for bench_generation.json')
    return parser.parse_args(argv)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.Dict[str, tp.Any]:
    args = parse_args(argv)
    if args.dtype is None:
        args.dtype = 'float32' if args.device == 'cpu' else 'float16'
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = build_base(args.dim, args.layers, args.heads, args.card, n_q=4, device=args.device)
    base.lm.to(dtype)
    extended = ExtendedMusicGen.from_base(base, num_additional_layers=args.new_layers)
    stock = extended.merged_musicgen()
    stock.lm.to(dtype)
    models = {'base (L)': base, 'extended (L + N)': extended, 'stock L + N': stock}
    if dtype != torch.float16:
        half_base = ExtendedMusicGen.from_base(copy.deepcopy(base), num_additional_layers=args.new_layers)
        half_base.lm.store_base_in(torch.float16)
        models['extended, fp16 base'] = half_base
    prompts = ['calm piano'] * args.batch
    for model in models.values():  # warm-up
        tokens_per_second(model, prompts, 0.2)
    speeds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            speeds[name].append(tokens_per_second(model, prompts, args.duration))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    limit = (args.layers + args.new_layers) / args.layers
    print(f"device={args.device} dtype={args.dtype} dim={args.dim} L={args.layers} N={args.new_layers} "
          f"heads={args.heads} card={args.card} batch={args.batch} duration={args.duration}s repeats={args.repeats}")
    print(f"{'model':<20}{'tokens/s':>10}{'slowdown vs base':>18}")
    for name, value in median.items():
        print(f"{name:<20}{value:>10.1f}{median['base (L)'] / value:>18.3f}")
    slowdown = median['base (L)'] / median['extended (L + N)']
    print(f"layer-ratio limit (L+N)/L = {limit:.3f}; extended slowdown / limit = {slowdown / limit:.3f}; "
          f"extended vs stock L+N = {median['stock L + N'] / median['extended (L + N)']:.3f}x time")
    if 'extended, fp16 base' in median:
        print(f"float16 base: {median['extended (L + N)'] / median['extended, fp16 base']:.3f}x the extended "
              "model's time")
    # The dtypes of each model's LM weights (the residual stream's: embeddings and layers).
    dtypes = {name: sorted({str(p.dtype) for p in model.lm.parameters()}) for name, model in models.items()}
    results = {'config': vars(args), 'machine': machine_description(args.device), 'tokens_per_second': speeds,
               'median': median, 'limit': limit, 'slowdown': slowdown, 'slowdown_vs_limit': slowdown / limit,
               'dtypes': dtypes}
    (ensure_out(args.out) / 'bench_generation.json').write_text(json.dumps(results, indent=1))
    return results


if __name__ == '__main__':
    main()
