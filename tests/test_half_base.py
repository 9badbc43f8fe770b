"""A frozen base stored in float16 (`ExtendedLMModel.store_base_in`, `extended_model.base_dtype`).

The reference for every comparison is the same model whose base transformer weights were rounded
to float16 but kept in float32: storing them in float16 must change memory, not results.
"""
import pytest
import torch

from audiocraft_ext import ExtendedLMModel, ExtendedMusicGen
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen


pytestmark = pytest.mark.usefixtures('single_thread_torch')


@pytest.fixture(scope='module')
def extended(perturb_extension):
    """The tiny base of `flavour` with 2 perturbed new layers (the same ones in every call)."""
    def build(flavour: str = 'text', round_base: bool = False, store_half: bool = False) -> ExtendedLMModel:
        base = build_tiny_musicgen(flavour)
        if round_base:
            with torch.no_grad():
                for param in base.lm.transformer.parameters():
                    param.copy_(param.half().float())
        torch.manual_seed(0)
        lm = ExtendedLMModel(base.lm, 2)
        perturb_extension(lm)
        if store_half:
            lm.store_base_in(torch.float16)
        return lm
    return build


def _bytes(module: torch.nn.Module) -> int:
    return sum(param.nbytes for param in module.parameters())


def test_only_the_base_transformer_is_stored_in_float16_at_half_the_bytes(extended):
    lm = extended()
    base_bytes, hash_before = _bytes(lm.base_transformer), weights_hash(lm.base_state_dict())
    others = {name: param.dtype for name, param in lm.named_parameters() if not name.startswith('transformer.base.')}
    lm.store_base_in('float16')
    assert lm.base_dtype is torch.float16
    assert {param.dtype for param in lm.base_transformer.parameters()} == {torch.float16}
    assert _bytes(lm.base_transformer) * 2 == base_bytes
    # Embeddings, conditioners, out_norm, heads and the new layers stay as they were.
    assert {name: param.dtype for name, param in lm.named_parameters()
            if not name.startswith('transformer.base.')} == others == {name: torch.float32 for name in others}
    assert weights_hash(lm.base_state_dict()) == hash_before  # extension-only files still load on the float32 base


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_logits_equal_those_of_the_base_rounded_to_float16(flavour, condition_tensors, extended, lm_logits,
                                                           random_codes):
    reference, half = extended(flavour, round_base=True), extended(flavour, store_half=True)
    conditions, codes = condition_tensors(build_tiny_musicgen(flavour)), random_codes(reference)
    expected = lm_logits(reference, conditions, codes)
    assert torch.equal(lm_logits(half, conditions, codes), expected)
    assert half.base_dtype is torch.float16, "float16 storage is put back after each layer"
    # Control: the rounding itself changes the logits, so the equality above is not vacuous.
    assert not torch.equal(lm_logits(extended(flavour), conditions, codes), expected)


def test_logits_under_autocast_equal_those_of_the_rounded_base(condition_tensors, extended, lm_logits, random_codes):
    reference, half = extended(round_base=True), extended(store_half=True)
    conditions, codes = condition_tensors(build_tiny_musicgen('text')), random_codes(reference)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # CPU autocast refuses float16 norms as stored
        expected = lm_logits(reference, conditions, codes)
        assert torch.equal(lm_logits(half, conditions, codes), expected)


def test_training_steps_match_the_rounded_base_and_leave_the_float16_base_bit_identical(extended, train_extension):
    reference, half = extended(round_base=True), extended(store_half=True)
    half_base = {name: value.clone() for name, value in half.base_state_dict().items()}
    base = build_tiny_musicgen('text')
    assert train_extension(half, base, steps=3) == train_extension(reference, base, steps=3)
    trained = half.extension_state_dict()
    assert all(torch.equal(trained[name], value) for name, value in reference.extension_state_dict().items())
    assert all(torch.equal(half.base_state_dict()[name], value) for name, value in half_base.items())
    assert half.base_dtype is torch.float16


@torch.no_grad()
def test_generation_equals_the_rounded_base(extended):
    tokens = []
    for lm in (extended(round_base=True), extended(store_half=True)):
        base = build_tiny_musicgen('text')
        model = ExtendedMusicGen(base.name, base.compression_model, lm, max_duration=base.max_duration)
        model.set_generation_params(duration=0.3, top_k=20)
        torch.manual_seed(0)
        tokens.append(model.generate(['a tiny prompt', None], return_tokens=True)[1])
    assert torch.equal(tokens[0], tokens[1])


def test_float32_undoes_the_storage_and_keeps_the_rounded_values(condition_tensors, extended, lm_logits, random_codes):
    reference, lm = extended(round_base=True), extended(store_half=True)
    lm.store_base_in(torch.float32)
    assert lm.base_dtype is torch.float32
    conditions, codes = condition_tensors(build_tiny_musicgen('text')), random_codes(lm)
    assert torch.equal(lm_logits(lm, conditions, codes), lm_logits(reference, conditions, codes))


def _base_inputs(lm: ExtendedLMModel):
    """Random x [1, 3, D] and cross-attention source [1, 2, D] for the text base's transformer."""
    return torch.randn(1, 3, lm.dim), {'cross_attention_src': torch.randn(1, 2, lm.dim)}


def test_a_float16_layer_run_with_gradients_is_refused(extended):
    lm = extended(store_half=True)
    x, kwargs = _base_inputs(lm)
    with pytest.raises(RuntimeError, match=r'float16-stored weights ran with gradients enabled.*torch\.no_grad'):
        lm.base_transformer(x, **kwargs)
    assert lm.base_dtype is torch.float16


def test_an_error_inside_a_layer_puts_the_float16_storage_back(extended):
    lm = extended(store_half=True)
    layer = lm.base_transformer.layers[0]

    def fail(*args):
        assert layer.linear1.weight.dtype is torch.float32, "the layer runs on a float32 copy"
        raise RuntimeError('boom')

    layer.linear2.register_forward_pre_hook(fail)
    x, kwargs = _base_inputs(lm)
    with torch.no_grad(), pytest.raises(RuntimeError, match='boom'):
        lm.base_transformer(x, **kwargs)
    assert {param.dtype for param in layer.parameters()} == {torch.float16}


@pytest.mark.parametrize('dtype', ['bfloat16', torch.bfloat16, torch.float64, 'int8', 'fp16'])
def test_other_dtypes_are_refused(dtype, extended):
    lm = extended()
    with pytest.raises(ValueError, match=r"Cannot store the frozen base in .*use float16 .* or float32"):
        lm.store_base_in(dtype)
    assert lm.base_dtype is torch.float32


def test_feature_cache_hits_equal_the_float16_base(tmp_path, condition_tensors, extended, lm_logits, random_codes):
    lm = extended(store_half=True)
    conditions, codes = condition_tensors(build_tiny_musicgen('text')), random_codes(lm)
    expected = lm_logits(lm, conditions, codes)
    cache = lm.use_feature_cache(tmp_path)
    cold = lm_logits(lm, conditions, codes)
    warm = lm_logits(lm, conditions, codes)
    assert cache.take_counts() == (2, 2)  # 2 examples: missed, then read back
    assert torch.equal(cold, expected) and torch.equal(warm, expected)


def test_saved_model_with_a_float16_base_loads_with_the_same_logits(tmp_path, condition_tensors, lm_logits,
                                                                    perturb_extension, random_codes):
    base = build_tiny_musicgen('text')
    model = ExtendedMusicGen.from_base(base, num_additional_layers=2)
    perturb_extension(model.lm)
    model.lm.store_base_in(torch.float16)
    conditions, codes = condition_tensors(base), random_codes(model.lm)
    loaded = ExtendedMusicGen.get_pretrained(model.save(tmp_path / 'model.pt'), device='cpu')
    assert loaded.base_hash == model.base_hash
    assert torch.equal(lm_logits(loaded.lm, conditions, codes), lm_logits(model.lm, conditions, codes))
