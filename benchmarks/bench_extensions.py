"""Several extensions of one base: one mixed batch in one model vs the same items by separate models.

    python benchmarks/bench_extensions.py            # dim 256, L 8, N 4, card 2048: k = 1, 2, 4, 8
    python benchmarks/bench_extensions.py --quick    # tiny shapes, seconds (the smoke test)

For k extensions of one random base (new layers perturbed so that they differ), 8 captions, 8/k
per extension, generated greedily with classifier-free guidance:

- *one model*: the base once plus the k extensions (`ExtendedMusicGen.attach`), one
  `generate(captions, extensions=[...])`: the base's transformer runs once per step for the batch;
- *separate*: k models, each with its own copy of the base, each generating its 8/k captions.

Prints the bytes each side holds (LM parameters and buffers), the peak bytes torch allocates during
one generation (`common.peak_step_bytes`, 0.2 s of audio), and the generation time (CPU seconds of
this process, median over rounds that alternate the two sides), with their ratios.
"""
import argparse
import statistics
import typing as tp

import torch

import common

SHAPES = {'cpu': dict(dim=256, layers=8, heads=8, new_layers=4, card=2048, n_q=4),
          'quick': dict(dim=32, layers=2, heads=2, new_layers=1, card=64, n_q=4)}
BATCH = 8


def lm_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.lm.parameters(), *model.lm.buffers()])


def extended_model(shape: dict, seed: int):
    """A model of the base (always the same random weights) with new layers of its own (`seed`)."""
    from audiocraft_ext import ExtendedMusicGen
    base = common.build_base(shape['dim'], shape['layers'], shape['heads'], shape['card'], shape['n_q'], 'cpu')
    torch.manual_seed(seed)  # the new layers' initialisation
    model = ExtendedMusicGen.from_base(base, num_additional_layers=shape['new_layers'], device='cpu')
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.lm.extension.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def measure(shape: dict, k: int, duration: float, repeats: int) -> tp.Dict[str, tp.Any]:
    separate = [extended_model(shape, seed) for seed in range(1, k + 1)]
    host = extended_model(shape, 1)
    names = [host.OWN] + [f'ext{index}' for index in range(1, k)]
    for name, model in zip(names[1:], separate[1:]):
        host.attach(name, model)
    captions = [f'caption {index}' for index in range(BATCH)]
    routes = [names[index * k // BATCH] for index in range(BATCH)]
    groups = [[c for c, r in zip(captions, routes) if r == name] for name in names]

    def one_model(seconds: float) -> tp.Callable[[], tp.Any]:
        host.set_generation_params(duration=seconds, use_sampling=False)
        return lambda: host.generate(captions, return_tokens=True, extensions=routes)

    def separately(seconds: float) -> tp.Callable[[], tp.Any]:
        for model in separate:
            model.set_generation_params(duration=seconds, use_sampling=False)
        return lambda: [model.generate(group, return_tokens=True) for model, group in zip(separate, groups)]

    mixed = one_model(duration)()[1]
    alone = torch.cat([tokens[1] for tokens in separately(duration)()])
    times: tp.Dict[str, tp.List[float]] = {'one model': [], 'separate': []}
    for _ in range(repeats):
        for side, make in (('one model', one_model), ('separate', separately)):
            times[side].append(common.timed(make(duration), 'cpu')[1])
    return {'k': k, 'same_tokens': bool(torch.equal(mixed, alone)),
            'bytes': {'one model': lm_bytes(host), 'separate': sum(lm_bytes(m) for m in separate)},
            'peak_bytes': {'one model': common.peak_step_bytes(one_model(0.2), 'cpu'),
                           'separate': common.peak_step_bytes(separately(0.2), 'cpu')},
            'cpu_s': {side: statistics.median(values) for side, values in times.items()}}


def report(rows: tp.List[dict], shape: dict, duration: float) -> str:
    lines = [f"dim={shape['dim']} L={shape['layers']} N={shape['new_layers']} card={shape['card']}; {BATCH} captions, "
             f"{duration:g} s each, greedy, CFG; ratios one model / separate",
             f"{'k':>3} {'MB one':>8} {'MB sep':>8} {'ratio':>6} {'peak MB one':>12} {'peak MB sep':>12} {'ratio':>6} "
             f"{'cpu s one':>10} {'cpu s sep':>10} {'ratio':>6}  same tokens"]
    for row in rows:
        b, p, t = row['bytes'], row['peak_bytes'], row['cpu_s']
        lines.append(f"{row['k']:>3} {b['one model'] / 1e6:>8.1f} {b['separate'] / 1e6:>8.1f} "
                     f"{b['one model'] / b['separate']:>6.2f} {p['one model'] / 1e6:>12.1f} {p['separate'] / 1e6:>12.1f} "
                     f"{p['one model'] / p['separate']:>6.2f} {t['one model']:>10.2f} {t['separate']:>10.2f} "
                     f"{t['one model'] / t['separate']:>6.2f}  {row['same_tokens']}")
    return '\n'.join(lines)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='tiny shapes, k = 1 and 2, one round')
    parser.add_argument('--repeats', type=int, default=3, help='timing rounds (default: %(default)s)')
    parser.add_argument('--duration', type=float, default=1.0, help='seconds generated per caption')
    parser.add_argument('--out', default=str(common.DEFAULT_OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = SHAPES['quick' if args.quick else 'cpu']
    counts, repeats, duration = ((1, 2), 1, 0.2) if args.quick else ((1, 2, 4, 8), args.repeats, args.duration)
    rows = [measure(shape, k, duration, repeats) for k in counts]
    text = f"{common.machine_description('cpu')}\n{report(rows, shape, duration)}"
    print(text, flush=True)
    common.write_results(args.out, 'bench_extensions', rows, text)
    return rows


if __name__ == '__main__':
    main()
