"""Trainable fraction and checkpoint sizes: extension-only file (new layers in float32, float16,
bfloat16: `save(..., dtype=...)`, `export --dtype`) vs self-contained file vs the model exported to
AudioCraft's layout (a stock L + N layer MusicGen), for random bases of given shapes; and how far
the logits of a half-precision file's model are from the float32 file's.

Sizes do not depend on the device, so musicgen-small shapes are measured on CPU too. The
compression model here is the tiny random EnCodec of the test fixtures (1.5 MB); a real
MusicGen's 32 kHz EnCodec adds about 236 MB to every file that carries one (self-contained,
exported), and nothing to an extension-only file.

    python benchmarks/bench_checkpoints.py                        # CPU config and musicgen-small shapes
    python benchmarks/bench_checkpoints.py --preset cpu           # one of them
"""
import argparse
from pathlib import Path
import tempfile
import typing as tp

import torch

import common

PRESETS = {
    'cpu': dict(dim=256, layers=8, heads=8, new_layers=4, card=2048, n_q=4),
    'musicgen-small': dict(dim=1024, layers=24, heads=16, new_layers=12, card=2048, n_q=4),
}


def size(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(preset: str) -> tp.Dict[str, tp.Any]:
    from audiocraft_ext import ExtendedMusicGen
    from audiocraft_ext.models.tiny import save_exported
    shape = PRESETS[preset]
    base = common.build_base(shape['dim'], shape['layers'], shape['heads'], shape['card'], shape['n_q'], 'cpu')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_exported(base, tmp / 'base')  # the base as a Hugging Face snapshot / exported directory
        del base
        extended = ExtendedMusicGen.from_base(str(tmp / 'base'), shape['new_layers'], device='cpu')
        with torch.no_grad():  # trained-like new layers: the zero-initialised outputs would hide any rounding
            for parameter in extended.lm.extension.parameters():
                parameter.normal_(0.0, 0.02)
        trainable, total = extended.lm.parameter_counts()
        float32_file = extended.save(tmp / 'extension_only.safetensors', include_base=False)
        sizes = {
            'base (exported, L layers)': size(tmp / 'base'),
            'extension-only file': size(float32_file),
            'self-contained file': size(extended.save(tmp / 'full.pt')),
            'exported L + N (stock layout)': size(extended.export_audiocraft(tmp / 'exported')),
        }
        compression = size(tmp / 'base' / 'compression_state_dict.bin')
        reference = logits(ExtendedMusicGen.get_pretrained(float32_file, device='cpu'))
        differences = {}
        for dtype in ('float16', 'bfloat16'):
            path = extended.save(tmp / f'extension_only_{dtype}.safetensors', include_base=False, dtype=dtype)
            sizes[f'extension-only file, {dtype}'] = size(path)
            half = logits(ExtendedMusicGen.get_pretrained(path, device='cpu'))
            differences[dtype] = {'max_abs': (half - reference).abs().max().item(),
                                  'kl': torch.nn.functional.kl_div(half.log_softmax(-1), reference.log_softmax(-1),
                                                                   log_target=True, reduction='none')
                                  .sum(-1).mean().item()}
    return {'preset': preset, 'shape': shape, 'trainable': trainable, 'total': total,
            'base_params': total - trainable, 'compression_bytes': compression, 'sizes': sizes,
            'logits_vs_float32': differences}


def logits(model, frames: int = 50) -> torch.Tensor:
    """[positions, card] float32 logits of `model` on fixed random codes and two captions, at the
    positions the delay pattern fills (AudioCraft's logits are NaN elsewhere)."""
    from audiocraft.modules.conditioners import ConditioningAttributes
    lm = model.lm.eval()
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(lm.card, (2, lm.num_codebooks, frames), generator=generator)
    captions = [ConditioningAttributes(text={'description': text}) for text in ('calm piano', 'fast techno')]
    with torch.no_grad():
        output = lm.compute_predictions(codes, captions)
    return output.logits[output.mask].float()


def report(result: tp.Dict[str, tp.Any]) -> str:
    shape = result['shape']
    trainable, total = result['trainable'], result['total']
    lines = [f"{result['preset']}: dim={shape['dim']} L={shape['layers']} N={shape['new_layers']} "
             f"heads={shape['heads']} card={shape['card']} K={shape['n_q']}",
             f"  params: base LM {result['base_params']:,}, new layers {trainable:,}, extended total {total:,}",
             f"  trainable fraction: {100 * trainable / total:.1f}% of the extended model "
             f"(full fine-tuning of the base trains {result['base_params']:,}: "
             f"{trainable / result['base_params']:.2f}x as many)",
             f"  {'file':<34}{'MB':>10}{'vs exported':>13}"]
    exported = result['sizes']['exported L + N (stock layout)']
    for name, nbytes in result['sizes'].items():
        lines.append(f"  {name:<34}{nbytes / 1e6:>10.2f}{nbytes / exported:>13.3f}")
    lines.append(f"  (compression model in the files above: {result['compression_bytes'] / 1e6:.3f} MB, tiny fixture)")
    for dtype, difference in result['logits_vs_float32'].items():
        lines.append(f"  logits of the {dtype} file's model vs the float32 file's: max |difference| "
                     f"{difference['max_abs']:.2e}, mean KL {difference['kl']:.2e} nats per position")
    return '\n'.join(lines)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.List[tp.Dict[str, tp.Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', choices=sorted(PRESETS), action='append',
                        help='shapes to measure (repeatable; default: all)')
    parser.add_argument('--out', default=str(common.DEFAULT_OUT), help='folder for the JSON results')
    args = parser.parse_args(argv)
    results = []
    texts = []
    for preset in args.preset or list(PRESETS):
        torch.manual_seed(0)
        results.append(measure(preset))
        texts.append(report(results[-1]))
        print(texts[-1], flush=True)
    common.write_results(args.out, 'bench_checkpoints', results, '\n'.join(texts))
    return results


if __name__ == '__main__':
    main()
