"""The memory plan against measurement: predicted and measured peak memory of one training step,
side by side, for the extension and for full fine-tuning, on CPU, from a tiny model to dim 512 with
8 layers; and of the codec's encode at the released 32 kHz EnCodec's shapes.

Each step is the solvers' own: conditions encoded (CFG dropout), `compute_predictions`, MusicGen's
masked cross entropy (plus, with replay, `ForgettingControl`'s replay cross entropy and KL to the
base's logits from the same forward), backward, gradient clipping, AdamW with its multi-tensor
update (`foreach=True`, torch's default on CUDA), the step's outputs held until its end as
`MusicGenSolver.run_step` holds them. The prediction is `memory_plan.extension_step` /
`full_finetuning_step` on the model's own shape (`memory_plan.shape_of_musicgen`), without codec
and text encoder (the tiny models have a look-up-table conditioner and no codec in the step).

Measured: resident bytes (the storages of the weights, buffers and optimizer state after a first
step) + the peak of torch's CPU allocator during a second step (`common.peak_step_bytes`: every
allocation and free reported to the profiler with the running total).

    python benchmarks/bench_memory_plan.py            # about 3 min on 2 cores, one thread
    python benchmarks/bench_memory_plan.py --quick    # the tiny shape only (the test)
"""
import argparse
import copy
import gc
import typing as tp

import torch

from audiocraft.modules.conditioners import ConditioningAttributes
from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext.data.replay_set import ReplaySet
from audiocraft_ext.models import memory_plan
from audiocraft_ext.models.extended_lm import ExtendedLMModel
from audiocraft_ext.solvers.forgetting import ForgettingConfig, ForgettingControl, GeneratedReplay, replay_predict

import common

# name -> (dim, base layers L, new layers N, heads, card V, codebooks K, batch B, frames T)
SHAPES = {
    'tiny': dict(dim=64, layers=4, new_layers=2, heads=4, card=256, n_q=4, batch=4, frames=100),
    'dim 256': dict(dim=256, layers=8, new_layers=4, heads=8, card=2048, n_q=4, batch=4, frames=150),
    'dim 512': dict(dim=512, layers=8, new_layers=4, heads=8, card=2048, n_q=4, batch=4, frames=300),
}
# name -> (full fine-tuning?, settings); every row runs on every shape.
VARIANTS: tp.Dict[str, tp.Tuple[bool, tp.Dict[str, tp.Any]]] = {
    'full fine-tuning': (True, dict(precision='float32')),
    'extension': (False, dict(precision='float32', replay_ratio=0.0)),
    'extension + replay 0.5': (False, dict(precision='float32', replay_ratio=0.5)),
    'extension, float16 base + checkpointing': (False, dict(precision='float32', replay_ratio=0.0,
                                                            half_base=True, checkpointing=True)),
    'full fine-tuning, bfloat16 autocast': (True, dict(precision='bfloat16')),
    'extension + replay 0.5, bfloat16 autocast': (False, dict(precision='bfloat16', replay_ratio=0.5)),
}
# (implementation, batch, seconds) of the 32 kHz EnCodec's encode
CODEC_CASES = [('audiocraft', 2, 1.0), ('audiocraft', 1, 2.0), ('transformers', 2, 1.0)]
SAMPLE_RATE = 16000
BOUND = 0.15


def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='the tiny shape only, no codec (what the test runs)')
    parser.add_argument('--out', default=str(common.DEFAULT_OUT), help='folder for the JSON and text results')
    return parser.parse_args(argv)


class SolverStep:
    """One training step as `MusicGenSolver.run_step` runs it (with `ExtendedMusicGenSolver`'s
    forgetting control when `control` is given); AdamW and clipping with `foreach=True`."""
    def __init__(self, lm, codes: torch.Tensor, autocast: tp.Optional[torch.dtype],
                 control: tp.Optional[ForgettingControl] = None):
        self.lm, self.codes, self.control = lm, codes, control
        self.autocast = autocast
        self.params = [p for p in lm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8,
                                           foreach=True)
        self.descriptions = [f'random prompt {i}' for i in range(codes.shape[0])]

    def _autocast(self):
        return torch.autocast('cpu', dtype=self.autocast, enabled=self.autocast is not None)

    def __call__(self) -> None:
        lm = self.lm
        attributes = [ConditioningAttributes(text={'description': text}) for text in self.descriptions]
        tokenized = lm.condition_provider.tokenize(lm.att_dropout(lm.cfg_dropout(attributes)))
        with self._autocast():
            condition_tensors = lm.condition_provider(tokenized)
        with self._autocast():
            model_output = lm.compute_predictions(self.codes, [], condition_tensors)
            logits = model_output.logits
            ce, _ = MusicGenSolver._compute_cross_entropy(None, logits, self.codes, model_output.mask)  # type: ignore
            loss = ce
            if self.control is not None:
                extra, _ = self.control.loss(self.codes.shape[0], 'cpu')
                loss = ce + extra
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad()
        del model_output, logits  # held until here, as run_step holds them

    def resident_bytes(self) -> int:
        tensors = list(self.lm.parameters()) + list(self.lm.buffers())
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if torch.is_tensor(value)]
        return common.storage_bytes(tensors)


def build_step(base_lm, sizes: tp.Dict[str, int], full: bool, settings: memory_plan.Settings) -> SolverStep:
    batch = common.random_batch(sizes['batch'], sizes['n_q'], sizes['frames'], sizes['card'], 'cpu')
    autocast = None if settings.precision == 'float32' else getattr(torch, settings.precision)
    if full:
        return SolverStep(common.full_finetuning_lm(base_lm), batch.codes, autocast)
    overrides = {'checkpointing': 'torch'} if settings.checkpointing else {}
    lm = ExtendedLMModel(copy.deepcopy(base_lm), settings.new_layers, **overrides).train()
    if settings.half_base:
        lm.store_base_in(torch.float16)
    control = None
    if settings.replay_ratio:
        generator = torch.Generator().manual_seed(1)
        codes = torch.randint(0, sizes['card'], (8, sizes['n_q'], sizes['frames']), generator=generator)
        source = GeneratedReplay(ReplaySet(codes, [f'replay prompt {i}' for i in range(8)]), lm, SAMPLE_RATE, seed=1)
        def cross_entropy(*args):
            return MusicGenSolver._compute_cross_entropy(None, *args)  # type: ignore
        config = ForgettingConfig(ratio=settings.replay_ratio, ce_weight=0.0, distill_weight=1.0)
        control = ForgettingControl(source, config, replay_predict(lm), cross_entropy)
    return SolverStep(lm, batch.codes, autocast, control)


def measure_shape(name: str, sizes: tp.Dict[str, int]) -> tp.List[tp.Dict[str, tp.Any]]:
    torch.manual_seed(0)
    base = common.build_base(sizes['dim'], sizes['layers'], sizes['heads'], sizes['card'], sizes['n_q'], 'cpu')
    shape = memory_plan.shape_of_musicgen(name, base.lm)
    rows = []
    for variant, (full, options) in VARIANTS.items():
        settings = memory_plan.Settings(new_layers=sizes['new_layers'], batch_size=sizes['batch'],
                                        segment=sizes['frames'] / shape.frame_rate, text_tokens=1,
                                        replay_feature_cache=False, **options)
        predicted = (memory_plan.full_finetuning_step if full else memory_plan.extension_step)(shape, settings)
        step = build_step(base.lm, sizes, full, settings)
        step()  # the optimizer's state exists from here on
        gc.collect()
        resident = step.resident_bytes()
        measured = resident + common.peak_step_bytes(step, 'cpu')
        row = {'shape': name, 'variant': variant, 'predicted': predicted.peak, 'measured': measured,
               'ratio': predicted.peak / measured, 'phase': predicted.peak_phase,
               'predicted_resident': predicted.resident, 'measured_resident': resident}
        if settings.precision == 'float32':
            row['flops_ratio'] = memory_plan.step_flops(shape, settings, full=full) / common.count_flops(step)
        rows.append(row)
        print(format_row(row), flush=True)
        del step
        gc.collect()
    return rows


def codec_model(implementation: str):
    """A 32 kHz mono EnCodec at the released shapes (64 filters, ratios 8, 5, 4, 4, 4 codebooks of
    2048), random weights: AudioCraft's own or transformers' (what `facebook/encodec_32khz` loads)."""
    if implementation == 'transformers':
        from transformers import EncodecConfig, EncodecModel
        config = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                               hidden_size=128, num_lstm_layers=2, codebook_size=2048, codebook_dim=128,
                               target_bandwidths=[2.2], normalize=False, use_conv_shortcut=False)
        model = EncodecModel(config).eval()
        return lambda audio: model.encode(audio, bandwidth=2.2)
    from omegaconf import OmegaConf
    from audiocraft.models import builders
    # AudioCraft's config/model/encodec/default.yaml with encodec_large_nq4_s640.yaml's changes
    seanet = {'dimension': 128, 'channels': 1, 'causal': False, 'n_filters': 64, 'n_residual_layers': 1,
              'ratios': [8, 5, 4, 4], 'activation': 'ELU', 'activation_params': {'alpha': 1.0}, 'norm': 'weight_norm',
              'norm_params': {}, 'kernel_size': 7, 'residual_kernel_size': 3, 'last_kernel_size': 7, 'dilation_base': 2,
              'pad_mode': 'constant', 'true_skip': True, 'compress': 2, 'lstm': 2, 'disable_norm_outer_blocks': 0,
              'decoder': {'trim_right_ratio': 1.0, 'final_activation': None, 'final_activation_params': None},
              'encoder': {}}
    cfg = OmegaConf.create({
        'compression_model': 'encodec', 'device': 'cpu', 'dtype': 'float32', 'sample_rate': 32000, 'channels': 1,
        'encodec': {'autoencoder': 'seanet', 'quantizer': 'rvq', 'sample_rate': 32000, 'channels': 1,
                    'causal': False, 'renormalize': False},
        'seanet': seanet,
        'rvq': {'n_q': 4, 'q_dropout': False, 'bins': 2048, 'decay': 0.99, 'kmeans_init': False, 'kmeans_iters': 50,
                'threshold_ema_dead_code': 2, 'orthogonal_reg_weight': 0.0, 'orthogonal_reg_active_codes_only': False}})
    model = builders.get_compression_model(cfg).eval()
    return model.encode


def measure_codec() -> tp.List[tp.Dict[str, tp.Any]]:
    shape = memory_plan.PUBLISHED['facebook/musicgen-small']
    rows = []
    for implementation, batch, seconds in CODEC_CASES:
        encode = codec_model(implementation)
        audio = torch.randn(batch, 1, int(seconds * shape.sample_rate))

        def run():
            with torch.no_grad():
                encode(audio)
        run()
        measured = audio.nbytes + common.peak_step_bytes(run, 'cpu')
        predicted = memory_plan.codec_phase_bytes(shape, memory_plan.Settings(batch_size=batch, segment=seconds))
        row = {'shape': f'EnCodec 32 kHz ({implementation})', 'variant': f'encode {batch} x {seconds:g} s',
               'predicted': predicted, 'measured': measured, 'ratio': predicted / measured, 'phase': 'codec encode'}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: tp.Dict[str, tp.Any]) -> str:
    flops = f"{row['flops_ratio']:>8.3f}" if 'flops_ratio' in row else f"{'':>8}"
    return (f"{row['shape']:<30}{row['variant']:<44}{row['predicted'] / 2**20:>10.1f}{row['measured'] / 2**20:>10.1f}"
            f"{row['ratio']:>8.3f}{flops}  {row['phase']}")


def header() -> str:
    return (f"{'shape':<30}{'variant':<44}{'pred MiB':>10}{'meas MiB':>10}{'ratio':>8}{'FLOPs':>8}  peak phase\n"
            + '-' * 122)


def main(argv: tp.Optional[tp.List[str]] = None) -> tp.Dict[str, tp.Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"machine: {common.machine_description('cpu')} (no GPU)", '', header()]
    print('\n'.join(lines), flush=True)
    rows = []
    for name, sizes in SHAPES.items():
        if args.quick and name != 'tiny':
            continue
        rows += measure_shape(name, sizes)
    if not args.quick:
        rows += measure_codec()
    lines += [format_row(row) for row in rows]
    worst = max(abs(row['ratio'] - 1) for row in rows)
    summary = (f"ratio = predicted / measured; FLOPs = the plan's / torch's FlopCounterMode. Every prediction within "
               f"{100 * worst:.1f} % of its measurement (bound {100 * BOUND:.0f} %): "
               f"{'met' if worst <= BOUND else 'NOT MET'}.")
    lines += ['', summary]
    print('\n' + summary)
    results = {'machine': common.machine_description('cpu'), 'rows': rows, 'worst': worst,
               'shapes': SHAPES, 'variants': {name: options for name, (_, options) in VARIANTS.items()}}
    common.write_results(args.out, 'bench_memory_plan', results, '\n'.join(lines))
    return results


if __name__ == '__main__':
    main()
