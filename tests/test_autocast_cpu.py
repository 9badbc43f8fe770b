"""GPU code paths that also run on a CPU, run here: training under autocast (bfloat16,
and float16 with its GradScaler), the frozen base stored in float16 under autocast, and
generation under autocast, so a user's first GPU run is not the first run of that code.

On a GPU, AudioCraft's loaders give float16 models and `MusicGen` generates under float16
autocast, and the training configs default to `autocast=true`; here the same code runs under CPU
autocast. CPU and GPU kernels differ, so what is checked is behaviour (autocast really on, the
run completes, what must not change does not), not numbers.
"""
import math
import typing as tp

import pytest
import torch

from adaptation_checks import gain_and_forgetting
from audiocraft.utils.autocast import TorchAutocast
from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.models.tiny import build_tiny_musicgen
from audiocraft_ext.solvers.nonfinite import NonFiniteStepError

pytestmark = pytest.mark.usefixtures('dora_dir', 'single_thread_torch')


@pytest.fixture(scope='module')
def make_solver(build_solver):
    """`make_solver(base, egs, *extra) -> (xp, solver)` of the debug config on `base`."""
    def make(base, egs, *extra: str):
        return build_solver(['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}',
                             f'egs_root={egs}', *extra])
    return make


def record_output_dtypes(module: torch.nn.Module, when: tp.Callable[[], bool] = lambda: True) -> tp.Set[torch.dtype]:
    seen: tp.Set[torch.dtype] = set()
    module.register_forward_hook(lambda _, args, output: seen.add(output.dtype) if when() else None)
    return seen


def snapshot(state: tp.Dict[str, torch.Tensor]) -> tp.Dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in state.items()}


@pytest.mark.parametrize('autocast_dtype,base_dtype', [('bfloat16', None), ('bfloat16', 'float16'),
                                                       ('float16', None)])
def test_training_under_cpu_autocast(exported_bases, egs, autocast_dtype, base_dtype, make_solver):
    extra = ['autocast=true', f'autocast_dtype={autocast_dtype}', f'label=autocast_{autocast_dtype}_{base_dtype}']
    if base_dtype:
        extra.append(f'extended_model.base_dtype={base_dtype}')
    xp, solver = make_solver(exported_bases['text'], egs, *extra)
    lm = solver.model
    dtype = getattr(torch, autocast_dtype)
    new_layer = record_output_dtypes(lm.extension.layers[0].linear1, lambda: solver.is_training)
    base_layer = record_output_dtypes(lm.base_transformer.layers[0].linear1, lambda: solver.is_training)
    base_before, extension_before = snapshot(lm.base_state_dict()), snapshot(lm.extension_state_dict())
    with xp.enter():
        solver.run()

    assert new_layer == {dtype} and base_layer == {dtype}, "autocast was on in the training steps"
    history = torch.load(xp.folder / 'checkpoint.th')['history']
    assert len(history) == 2 and all(math.isfinite(epoch['train']['ce']) for epoch in history)
    assert 'ce' in history[-1]['evaluate'] and 'rtf' in history[-1]['generate']  # both stages ran too
    # 4 updates on the tones learn under autocast (measured for all three: gain 0.350 nats per token,
    # forgetting of the base's held-out generations 0.025); zero learning rate gives 0 and 0.
    gain, forgetting = gain_and_forgetting(xp.folder)
    assert gain > 0.25 and forgetting < 0.10, (gain, forgetting)
    assert lm.base_dtype is getattr(torch, base_dtype or 'float32')
    assert all(torch.equal(lm.base_state_dict()[name], value) for name, value in base_before.items())
    assert any(not torch.equal(lm.extension_state_dict()[name], value) for name, value in extension_before.items())
    state = torch.load(xp.folder / 'checkpoint.th')
    if dtype is torch.float16:
        # A live GradScaler, as on a GPU (a CUDA-only one disables itself on a CPU: scale 1).
        assert all(epoch['train']['grad_scale'] > 1 for epoch in history)
        assert state['scaler']['scale'] > 1
    # AudioCraft keeps the best state in the autocast dtype; the exported model carries those values.
    best = state['best_state']['model']
    assert {value.dtype for value in best.values() if value.is_floating_point()} == {dtype}
    model = ExtendedMusicGen.from_solver_checkpoint(xp.folder, device='cpu')
    assert all(torch.equal(value, best[name].float()) for name, value in model.lm.extension_state_dict().items())
    model.set_generation_params(duration=0.2)
    assert torch.isfinite(model.generate(['a tone'])).all()


def test_nan_loss_under_float16_autocast_stops_before_any_weight_moves(exported_bases, egs, inject_nan_logits,
                                                                       make_solver):
    """With a GradScaler the optimizer step is skipped by the scaler, and AudioCraft's check after it
    ("Model probably diverged.") becomes our error: the GPU's float16 path, run here on a CPU."""
    xp, solver = make_solver(exported_bases['text'], egs, 'autocast=true', 'autocast_dtype=float16',
                             'label=autocast_float16_nan')
    assert isinstance(solver.scaler, torch.amp.GradScaler) and solver.scaler.is_enabled()
    inject_nan_logits(solver, lambda step: step == 0)
    before = snapshot(solver.model.extension_state_dict())
    with xp.enter(), pytest.raises(NonFiniteStepError,
                                   match=r'Non-finite loss at epoch 1, step 0: the step was not applied'):
        solver.run()
    assert all(torch.equal(solver.model.extension_state_dict()[name], value) for name, value in before.items())


@pytest.fixture(scope='module')
def extended_tiny(perturb_extension):
    """A tiny extended model with perturbed new layers; `base`: 'float32', 'float16 storage' (the
    frozen base stored in float16) or 'float16 model' (the whole LM in float16, as AudioCraft loads
    a MusicGen on a GPU; the new layers follow its dtype)."""
    def build(flavour: str, base: str) -> ExtendedMusicGen:
        musicgen = build_tiny_musicgen(flavour)
        if base == 'float16 model':
            musicgen.lm.half()
        torch.manual_seed(0)
        model = ExtendedMusicGen.from_base(musicgen, num_additional_layers=2)
        perturb_extension(model.lm)
        if base == 'float16 storage':
            model.lm.store_base_in('float16')
        return model
    return build


@pytest.mark.parametrize('flavour,base,dtype', [
    ('text', 'float32', torch.bfloat16), ('text', 'float32', torch.float16),
    ('text', 'float16 storage', torch.bfloat16), ('text', 'float16 storage', torch.float16),
    ('text', 'float16 model', torch.float16), ('melody', 'float16 storage', torch.bfloat16),
])
@torch.no_grad()
def test_generation_under_cpu_autocast(flavour, base, dtype, demucs_offline, extended_tiny):
    model = extended_tiny(flavour, base)
    model.autocast = TorchAutocast(enabled=True, device_type='cpu', dtype=dtype)  # MusicGen's GPU setting
    new_layer = record_output_dtypes(model.lm.extension.layers[0].linear1)
    model.set_generation_params(duration=0.3)
    if flavour == 'melody':
        melody = torch.sin(torch.arange(8000) / 16000 * 2 * math.pi * 220)[None]
        wav, tokens = model.generate_with_chroma(['a', 'b'], [melody, None], 16000, return_tokens=True)
    else:
        wav, tokens = model.generate(['a', None], return_tokens=True)
    assert new_layer == {dtype}
    assert list(tokens.shape) == [2, model.lm.num_codebooks, 15]
    assert 0 <= tokens.min() and tokens.max() < model.lm.card
    assert torch.isfinite(wav).all() and wav.shape[0] == 2
    if base == 'float16 storage':
        assert model.lm.base_dtype is torch.float16
    if base == 'float16 model':
        assert {param.dtype for param in model.lm.extension.parameters()} == {torch.float16}
