"""How to run a frozen base stored in half precision: the no-grad forward of the base transformer
in float32, stored in float16 and computed on float32 copies (`store_base_in`, what the project
does), and computed in float16 or bfloat16 end to end. Same inputs, alternating rounds.

    python benchmarks/bench_base_precision.py          # dim 256, L 8, batch 4 x 150 steps, one thread

Prints the CPU time of each (median) and how far its output is from the float32 base's.
"""
import argparse
import copy
import statistics

import torch

from audiocraft_ext.models.extended_lm import ExtendedLMModel
from audiocraft_ext.models.half_storage import store_weights_in

import common


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dim', type=int, default=256)
    parser.add_argument('--layers', type=int, default=8)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--steps', type=int, default=150)
    parser.add_argument('--repeats', type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = common.build_base(args.dim, args.layers, args.heads, 2048, 4, 'cpu')
    lm = ExtendedLMModel(base.lm, 1)
    batch = common.random_batch(args.batch, 4, args.steps, 2048, 'cpu')
    x, kwargs, reference = common.capture_base_io(lm, batch, 'cpu')  # float32 inputs and output
    float32 = lm.base_transformer
    stored = copy.deepcopy(float32)
    store_weights_in(stored.layers, torch.float16)

    def computed_in(dtype: torch.dtype):
        transformer = copy.deepcopy(float32).to(dtype)
        cast = {key: value.to(dtype) if torch.is_tensor(value) else value for key, value in kwargs.items()}
        return lambda: transformer(x.to(dtype), **cast).float()

    variants = {'float32': lambda: float32(x, **kwargs),
                'float16 storage, float32 copies': lambda: stored(x, **kwargs),
                'computed in float16': computed_in(torch.float16),
                'computed in bfloat16': computed_in(torch.bfloat16)}
    with torch.no_grad():
        times = common.run_alternating(variants, args.repeats, 'cpu')
        error = {name: (run() - reference).abs().max().item() for name, run in variants.items()}
    print(f"base transformer no-grad forward: dim={args.dim} L={args.layers} batch={args.batch} "
          f"steps={args.steps} repeats={args.repeats}, one thread")
    print(f"machine: {common.machine_description('cpu')}")
    float32_time = statistics.median(times['float32']['cpu'])
    print(f"{'variant':<34}{'cpu s':>8}{'vs float32':>12}{'max |output - float32|':>25}")
    for name in variants:
        median = statistics.median(times[name]['cpu'])
        print(f"{name:<34}{median:>8.3f}{median / float32_time:>12.2f}{error[name]:>25.4f}")


if __name__ == '__main__':
    main()
