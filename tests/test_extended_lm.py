"""ExtendedLMModel: frozen base, exact start, extension_scale, streaming, layer arguments.

The frozen base keeps no activation for backward and gets no gradient: this is where the extended
model's speed and memory win over full fine-tuning comes from (docs/BENCHMARKS.md measures it).
The tensors autograd saves for backward are counted with `torch.autograd.graph.saved_tensors_hooks`
during the forward and loss of a training step, as MusicGenSolver computes them. No timing here.
"""
import copy
import re
import typing as tp

import pytest
import torch
from torch import nn

from audiocraft.models.lm import LMModel
from audiocraft.modules.streaming import StreamingModule
from audiocraft.modules.transformer import StreamingTransformer
from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext import ExtendedLMModel, ExtendedMusicGen
from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen

pytestmark = pytest.mark.usefixtures('single_thread_torch')


def _numel(params) -> int:
    return sum(p.numel() for p in params)


# --- 1. Frozen base ---------------------------------------------------------------------------

def test_is_an_lmmodel_adopting_the_base_modules():
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    assert isinstance(lm, LMModel)
    assert isinstance(lm.extension, StreamingTransformer) and len(lm.extension.layers) == 2
    # Adopted, not copied: the very tensors of the base are the ones used.
    assert {id(p) for p in base.lm.parameters()} <= {id(p) for p in lm.parameters()}


def test_only_new_layers_are_trainable():
    base = build_tiny_musicgen('text')
    base_ids = {id(p) for p in base.lm.parameters()}
    lm = ExtendedLMModel(base.lm, 2)
    trainable = [name for name, p in lm.named_parameters() if p.requires_grad]
    frozen = [name for name, p in lm.named_parameters() if not p.requires_grad]
    assert trainable and all(name.startswith('transformer.extension.') for name in trainable)
    assert all(not p.requires_grad for p in base.lm.parameters())
    assert {id(p) for p in lm.parameters() if not p.requires_grad} == base_ids
    assert {id(p) for p in lm.parameters() if p.requires_grad} == {id(p) for p in lm.extension.parameters()}
    # Embeddings, conditioners, transformer, out_norm and heads are all among the frozen ones.
    for prefix in ('emb.', 'condition_provider.', 'transformer.base.', 'out_norm.', 'linears.'):
        assert any(name.startswith(prefix) for name in frozen), prefix


def test_print_trainable_parameters_matches_a_manual_count(capsys):
    base = build_tiny_musicgen('text')
    base_total = _numel(base.lm.parameters())
    per_layer = _numel(base.lm.transformer.layers[0].parameters())  # new layers copy the base's shape
    lm = ExtendedLMModel(base.lm, 3)
    capsys.readouterr()
    line = lm.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert line and line in printed
    numbers = [float(n.replace(',', '')) for n in re.findall(r'\d[\d,]*(?:\.\d+)?', line)]
    trainable, total = 3 * per_layer, base_total + 3 * per_layer
    assert trainable in numbers and total in numbers
    fractions = [n for n in numbers if n not in (trainable, total)]
    assert any(abs(n - 100 * trainable / total) < 1e-3 for n in fractions), line


def test_train_mode_keeps_base_transformer_in_eval():
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    for _ in range(2):  # also after an eval() -> train() cycle
        lm.train()
        assert lm.training and lm.cfg_dropout.training and lm.att_dropout.training
        assert all(m.training for m in lm.extension.modules())
        assert not any(m.training for m in lm.base_transformer.modules())
        lm.eval()
        assert not any(m.training for m in lm.modules())


def test_training_forward_keeps_no_base_activation_for_backward(random_codes, make_attributes):
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    lm.train()
    seen = {}

    def on_base(module, inputs, output):
        seen['base'] = (output.requires_grad, output.grad_fn, torch.is_grad_enabled(), module.training)

    def on_extension(module, inputs, output):
        seen['extension'] = output.requires_grad

    hooks = [lm.base_transformer.register_forward_hook(on_base),
             lm.extension.register_forward_hook(on_extension)]
    try:
        out = lm.compute_predictions(random_codes(lm), make_attributes(base))
    finally:
        for hook in hooks:
            hook.remove()
    requires_grad, grad_fn, grad_enabled, training = seen['base']
    assert not requires_grad and grad_fn is None and not grad_enabled and not training
    assert seen['extension'] is True and out.logits.requires_grad


class _Features(nn.Module):
    """Replaces the base transformer: returns its precomputed output (no base layer runs)."""
    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor, *args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
        return self.features


def _solver_loss(lm, codes, conditions) -> torch.Tensor:
    output = lm.compute_predictions(codes, [], conditions)
    ce, _ = MusicGenSolver._compute_cross_entropy(None, output.logits, codes, output.mask)  # type: ignore
    return ce


def _saved_for_backward(lm, codes, conditions) -> tp.Tuple[int, int, torch.Tensor]:
    """(number, bytes) of the tensors saved for backward by the training forward, and the loss."""
    saved: tp.List[torch.Tensor] = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _solver_loss(lm.train(), codes, conditions)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return len(saved), sum(storages.values()), loss


BASE_LAYERS, NEW_LAYERS = 4, 2  # for the saved-tensor count: N < L new layers on a deeper base


@pytest.fixture(scope='module')
def deep_base(random_codes, condition_tensors):
    """A tiny text base of BASE_LAYERS layers, codes and fixed condition tensors (no CFG dropout draw)."""
    model = build_tiny_musicgen('text', num_layers=BASE_LAYERS)
    codes = random_codes(model.lm, batch=2, frames=16)
    conditions = condition_tensors(model, batch=2)
    return model, codes, conditions


def _extend_a_copy(model) -> ExtendedLMModel:
    torch.manual_seed(0)
    return ExtendedLMModel(copy.deepcopy(model.lm), NEW_LAYERS)


def test_training_step_saves_only_what_the_new_layers_and_heads_save(deep_base):
    model, codes, conditions = deep_base
    extended = _extend_a_copy(model)
    count, nbytes, _ = _saved_for_backward(extended, codes, conditions)

    # The same new layers and frozen heads alone, fed the base's output as a constant.
    standalone = _extend_a_copy(model)
    standalone.load_state_dict(extended.state_dict())
    captured = {}
    handle = standalone.base_transformer.register_forward_hook(
        lambda module, args, output: captured.setdefault('features', output))
    with torch.no_grad():
        _solver_loss(standalone.train(), codes, conditions)
    handle.remove()
    assert not captured['features'].requires_grad  # the base output is outside the graph
    standalone.transformer.base = _Features(captured['features'])
    alone_count, alone_bytes, _ = _saved_for_backward(standalone, codes, conditions)
    assert (count, nbytes) == (alone_count, alone_bytes)

    full = copy.deepcopy(model.lm).requires_grad_(True)
    full_count, full_bytes, _ = _saved_for_backward(full, codes, conditions)
    # Full fine-tuning keeps all L base layers' activations; the extension N < L layers' only.
    per_layer = (full_count - alone_count) / (BASE_LAYERS - NEW_LAYERS)
    assert per_layer >= 5, (full_count, alone_count)
    assert full_bytes > nbytes


def test_the_solvers_loss_sends_a_gradient_to_every_new_tensor_and_no_base_tensor(deep_base):
    # Which tensors are trainable, and that an optimizer step leaves the base as it was, are
    # checked above and below; here: one backward of MusicGenSolver's loss.
    model, codes, conditions = deep_base
    extended = _extend_a_copy(model)
    _, _, loss = _saved_for_backward(extended, codes, conditions)
    loss.backward()
    new = {id(p) for p in extended.extension.parameters()}
    for name, parameter in extended.named_parameters():
        if id(parameter) in new:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in extended.extension.parameters())


def test_optimizer_steps_change_every_new_tensor_and_no_base_tensor(train_extension):
    base = build_tiny_musicgen('text')
    base_before = {k: v.clone() for k, v in base.lm.state_dict().items()}  # buffers included
    lm = ExtendedLMModel(base.lm, 2)
    extension_before = {k: v.clone() for k, v in lm.extension.state_dict().items()}
    losses = train_extension(lm, base, steps=4)
    assert all(p.grad is None for p in base.lm.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))

    unchanged = [k for k, v in lm.extension.state_dict().items() if torch.equal(v, extension_before[k])]
    assert not unchanged, f"new-layer tensors not trained: {unchanged}"
    base_after = base.lm.state_dict()
    assert base_after.keys() == base_before.keys()
    changed = [k for k in base_before if not torch.equal(base_after[k], base_before[k])]
    assert not changed, f"base tensors modified by training: {changed}"
    # The extended model's own view of the base agrees.
    extended_base = lm.base_state_dict()
    assert extended_base.keys() == base_before.keys()
    assert all(torch.equal(extended_base[k], base_before[k]) for k in base_before)


# --- 2. New layers on top, exact start --------------------------------------------------------

@pytest.mark.parametrize('flavour', FLAVOURS)
def test_exact_start_equals_base_logits(flavour, condition_tensors, lm_logits, make_attributes, random_codes):
    base = build_tiny_musicgen(flavour)
    codes = random_codes(base.lm)
    # Full path from ConditioningAttributes; for melody the (slow, demucs) conditions are computed
    # once from the same attributes and shared, which still exercises the prepend fuser.
    conditions = condition_tensors(base) if flavour == 'melody' else make_attributes(base)
    expected = lm_logits(base.lm, conditions, codes)
    lm = ExtendedLMModel(base.lm, 3)
    calls = []
    hook = lm.extension.register_forward_hook(lambda *args: calls.append(1))
    got = lm_logits(lm, conditions, codes)
    hook.remove()
    assert calls, "the new layers did not run"
    assert torch.equal(got, expected)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_exact_start_through_extended_musicgen(flavour, model_logits):
    expected = model_logits(build_tiny_musicgen(flavour))
    model = ExtendedMusicGen.from_base(build_tiny_musicgen(flavour), num_additional_layers=2)
    assert torch.equal(model_logits(model), expected)


def test_exact_start_with_layer_scale_bias_and_rope_bases(model_logits):
    for overrides in ({'layer_scale': 0.1, 'bias_ff': True, 'bias_attn': True},
                      {'positional_embedding': 'rope'}):
        base = build_tiny_musicgen('text', **overrides)
        expected = model_logits(base)
        model = ExtendedMusicGen.from_base(base, num_additional_layers=2)
        assert torch.equal(model_logits(model), expected), overrides


def test_new_layers_copy_the_base_layer_architecture():
    base = build_tiny_musicgen('text')
    base_shapes = {k: v.shape for k, v in base.lm.transformer.layers[0].state_dict().items()}
    lm = ExtendedLMModel(base.lm, 2)
    for layer in lm.extension.layers:
        shapes = {k.replace('.layer_scale.', '.'): v.shape for k, v in layer.state_dict().items()}
        assert shapes == base_shapes
        assert layer.norm_first and layer.cross_attention is not None
        assert layer.self_attn.num_heads == base.lm.transformer.layers[0].self_attn.num_heads


def test_no_second_positional_embedding():
    # At init every residual branch is zero, so the new layers must be the identity, even on a zero
    # input: a second sinusoidal embedding would show up as a non-zero output.
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    x = torch.zeros(2, 7, lm.dim)
    with torch.no_grad():
        out = lm.extension(x, cross_attention_src=torch.randn(2, 3, lm.dim))
    assert torch.equal(out, x)


def test_overrides_change_the_new_layers_and_keep_exact_start(model_logits):
    base = build_tiny_musicgen('text')
    expected = model_logits(base)
    model = ExtendedMusicGen.from_base(base, 2, dim_feedforward=64, num_heads=2)
    layer = model.lm.extension.layers[0]
    assert layer.linear1.out_features == 64 and layer.self_attn.num_heads == 2
    assert torch.equal(model_logits(model), expected)


# --- 3. extension_scale -----------------------------------------------------------------------

def test_extension_scale_zero_gives_base_logits_exactly(lm_logits, make_attributes, perturb_extension, random_codes):
    base = build_tiny_musicgen('text')
    codes = random_codes(base.lm)
    expected = lm_logits(base.lm, make_attributes(base), codes)
    lm = ExtendedLMModel(base.lm, 2)
    assert lm.extension_scale == 1.0
    perturb_extension(lm)
    full = lm_logits(lm, make_attributes(base), codes)
    assert not torch.allclose(full, expected, atol=1e-3), "perturbation too small to test anything"
    lm.extension_scale = 0.0
    assert lm.extension_scale == 0.0
    assert torch.equal(lm_logits(lm, make_attributes(base), codes), expected)
    lm.extension_scale = 1.0
    assert torch.equal(lm_logits(lm, make_attributes(base), codes), full)


def test_extension_scale_from_the_constructor(lm_logits, make_attributes, perturb_extension, random_codes):
    base = build_tiny_musicgen('text')
    codes = random_codes(base.lm)
    expected = lm_logits(base.lm, make_attributes(base), codes)
    lm = ExtendedLMModel(base.lm, 2, extension_scale=0.0)
    perturb_extension(lm)
    assert lm.extension_scale == 0.0
    assert torch.equal(lm_logits(lm, make_attributes(base), codes), expected)


def test_extension_scale_scales_the_residual_branches(lm_logits, make_attributes, perturb_extension, random_codes):
    # Independent model of the knob: scale s == the residual-branch output projections times s.
    base = build_tiny_musicgen('text')
    codes = random_codes(base.lm)
    lm = ExtendedLMModel(base.lm, 2)
    perturb_extension(lm)
    reference = copy.deepcopy(lm)
    lm.extension_scale = 0.5
    with torch.no_grad():
        for layer in reference.extension.layers:
            for linear in (layer.self_attn.out_proj, layer.cross_attention.out_proj, layer.linear2):
                linear.weight.mul_(0.5)
    got = lm_logits(lm, make_attributes(base), codes)
    want = lm_logits(reference, make_attributes(base), codes)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, lm_logits(base.lm, make_attributes(base), codes), atol=1e-3)


@pytest.mark.parametrize('value', [-1, -0.1, float('nan'), float('inf'), 'abc', None, [1.0]])
def test_invalid_extension_scale_is_refused(value):
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    lm.extension_scale = 0.25
    with pytest.raises((ValueError, TypeError), match='extension_scale'):
        lm.extension_scale = value
    assert lm.extension_scale == 0.25
    with pytest.raises((ValueError, TypeError), match='extension_scale'):
        ExtendedLMModel(build_tiny_musicgen('text').lm, 2, extension_scale=value)


# --- 5. Streaming (KV cache of the new layers) ------------------------------------------------

@pytest.fixture
def streaming_case(perturb_extension, random_codes, condition_tensors):
    """`streaming_case(flavour) -> (lm, conditions, sequence)`: perturbed new layers in eval mode."""
    def build(flavour, **base_overrides):
        base = build_tiny_musicgen(flavour, **base_overrides)
        lm = ExtendedLMModel(base.lm, 2)
        perturb_extension(lm)
        lm.eval()
        sequence = random_codes(lm)  # fed directly as the pattern sequence [B, K, S]
        return lm, condition_tensors(base), sequence
    return build


def _stream(lm, conds, sequence, break_extension_cache=False, on_step=None):
    steps = []
    with lm.streaming():
        if break_extension_cache:
            for module in lm.extension.modules():
                if isinstance(module, StreamingModule):
                    module._is_streaming = False
        for t in range(sequence.shape[-1]):
            steps.append(lm(sequence[..., t:t + 1], [], condition_tensors=conds))
            if on_step is not None:
                on_step(t)
    return torch.cat(steps, dim=2)


# Rotary bases are left out: in AudioCraft 1.3.0 a stock rope LMModel's own streaming logits differ
# from its full-sequence logits (by ~0.36 on the tiny base), base layers alone, so there is no
# exact reference to compare the new layers with.
@pytest.mark.parametrize('flavour', FLAVOURS)
@torch.no_grad()
def test_streaming_logits_equal_full_sequence_logits(flavour, streaming_case):
    lm, conds, sequence = streaming_case(flavour)
    full = lm(sequence, [], condition_tensors=conds)
    streamed = _stream(lm, conds, sequence)
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=0)
    # Control: without the new layers' cache the result is wrong, so the comparison above has teeth.
    broken = _stream(lm, conds, sequence, break_extension_cache=True)
    assert not torch.allclose(broken, full, atol=1e-4)


@torch.no_grad()
def test_new_layers_hold_a_kv_cache_growing_like_the_base_layers(streaming_case):
    lm, conds, sequence = streaming_case('text')
    sizes = []

    def on_step(t):
        new_state = lm.extension.layers[0].self_attn._streaming_state
        base_state = lm.base_transformer.layers[0].self_attn._streaming_state
        assert 'past_keys' in new_state, sorted(new_state)
        sizes.append((new_state['past_keys'].numel(), base_state['past_keys'].numel()))

    _stream(lm, conds, sequence, on_step=on_step)
    assert len(sizes) == sequence.shape[-1]
    assert all(new == old for new, old in sizes), "new layers' cache differs from a base layer's"
    growth = {b[0] - a[0] for a, b in zip(sizes, sizes[1:])}
    assert len(growth) == 1 and growth.pop() > 0  # one step more at every step
    assert not lm.extension.layers[0].self_attn._streaming_state  # cleared on exit


# --- 10. Bad layer arguments -------------------------------------------------------------------

@pytest.mark.parametrize('value', [0, -1, 1.5, True, '3', None])
def test_num_additional_layers_must_be_a_positive_int(value):
    base = build_tiny_musicgen('text')
    with pytest.raises((ValueError, TypeError), match='num_additional_layers'):
        ExtendedLMModel(base.lm, value)
    with pytest.raises((ValueError, TypeError), match='num_additional_layers'):
        ExtendedMusicGen.from_base(base, num_additional_layers=value)


def test_heads_that_do_not_divide_dim_are_refused():
    with pytest.raises(ValueError, match='num_heads'):
        ExtendedLMModel(build_tiny_musicgen('text').lm, 2, num_heads=5)


def test_unknown_override_lists_the_valid_keys():
    with pytest.raises(ValueError) as info:
        ExtendedLMModel(build_tiny_musicgen('text').lm, 2, num_hedas=2)
    message = str(info.value)
    assert 'num_hedas' in message
    for key in ('num_heads', 'dim_feedforward', 'dropout', 'norm_first'):
        assert key in message


@pytest.mark.parametrize('overrides,word', [({'norm_first': False}, 'norm_first'),
                                            ({'d_model': 64}, 'd_model')])
def test_incompatible_overrides_are_refused(overrides, word):
    with pytest.raises(ValueError, match=word):
        ExtendedLMModel(build_tiny_musicgen('text').lm, 2, **overrides)


def test_extending_an_extended_lm_is_refused_clearly():
    lm = ExtendedLMModel(build_tiny_musicgen('text').lm, 2)
    with pytest.raises(TypeError, match='ExtendedLMModel'):
        ExtendedLMModel(lm, 2)


def test_failed_construction_leaves_the_base_untouched():
    base = build_tiny_musicgen('text')
    for kwargs in ({'num_heads': 5}, {'extension_scale': -1.0}, {'bogus': 1}):
        with pytest.raises((ValueError, TypeError)):
            ExtendedLMModel(base.lm, 2, **kwargs)
        assert all(p.requires_grad for p in base.lm.parameters()), kwargs
