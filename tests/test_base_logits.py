"""The frozen base's logits from the same forward as the extended ones, and the KL to them."""
import pytest
import torch

from audiocraft_ext import ExtendedLMModel
from audiocraft_ext.models.distillation import kl_from_base
from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen


pytestmark = pytest.mark.usefixtures('single_thread_torch')


def _extended(flavour: str):
    base = build_tiny_musicgen(flavour)
    return base, ExtendedLMModel(base.lm, 2).eval()


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_base_logits_equal_extended_logits_at_step_0(flavour, demucs_offline, condition_tensors, random_codes):
    base, lm = _extended(flavour)
    codes = random_codes(lm)
    with torch.no_grad():
        output, base_logits = lm.compute_predictions_with_base(codes, [], condition_tensors(base))
    assert base_logits.shape == output.logits.shape == (*codes.shape, lm.card)
    valid = output.mask
    assert valid.any()
    assert torch.equal(output.logits[valid], base_logits[valid])
    # ... and they are the base's logits: those of the base with no extension at all.
    with torch.no_grad():
        lm.extension_scale = 0.0
        reference = lm.compute_predictions(codes, [], condition_tensors(base)).logits
    assert torch.equal(reference[valid], base_logits[valid])


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_base_logits_differ_from_perturbed_new_layers_and_stay_the_base(flavour, demucs_offline, condition_tensors,
                                                                       perturb_extension, random_codes):
    base, lm = _extended(flavour)
    codes = random_codes(lm)
    with torch.no_grad():
        _, before = lm.compute_predictions_with_base(codes, [], condition_tensors(base))
    perturb_extension(lm)
    with torch.no_grad():
        output, base_logits = lm.compute_predictions_with_base(codes, [], condition_tensors(base))
        plain = lm.compute_predictions(codes, [], condition_tensors(base)).logits
    valid = output.mask
    assert not torch.allclose(output.logits[valid], base_logits[valid])
    # The base half does not move with the new layers; the extended half is the plain forward.
    assert torch.equal(before[valid], base_logits[valid])
    torch.testing.assert_close(output.logits[valid], plain[valid], rtol=1e-5, atol=1e-5)


def test_one_base_pass_and_no_base_gradient(condition_tensors, perturb_extension, random_codes):
    base, lm = _extended('text')
    perturb_extension(lm)
    lm.train()
    calls = []
    handle = lm.base_transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        output, base_logits = lm.compute_predictions_with_base(random_codes(lm), [], condition_tensors(base))
    finally:
        handle.remove()
    assert len(calls) == 1
    assert not base_logits.requires_grad and output.logits.requires_grad
    assert not lm.transformer.with_base_output  # back to plain forwards afterwards


def test_kl_is_zero_at_step_0_and_its_gradient_reaches_only_the_new_layers(condition_tensors, perturb_extension,
                                                                            random_codes):
    base, lm = _extended('text')
    lm.train()
    torch.manual_seed(0)
    output, base_logits = lm.compute_predictions_with_base(random_codes(lm), [], condition_tensors(base))
    kl, per_codebook = kl_from_base(output.logits, base_logits, output.mask)
    assert kl.item() == 0.0 and all(value.item() == 0.0 for value in per_codebook)
    perturb_extension(lm)
    output, base_logits = lm.compute_predictions_with_base(random_codes(lm), [], condition_tensors(base))
    kl, _ = kl_from_base(output.logits, base_logits, output.mask)
    assert kl.item() > 0
    kl.backward()
    assert all(p.grad is None for p in lm.parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.extension.parameters())


def test_kl_matches_its_definition_on_valid_tokens():
    torch.manual_seed(0)
    logits, base_logits = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    mask = torch.rand(2, 3, 5) > 0.3
    logits[~mask] = float('nan')  # what the codebook pattern leaves at invalid positions
    kl, per_codebook = kl_from_base(logits, base_logits, mask)
    expected = []
    for k in range(3):
        p = base_logits[:, k][mask[:, k]].softmax(-1)
        q = logits[:, k][mask[:, k]].softmax(-1)
        expected.append((p * (p.log() - q.log())).sum(-1).mean())
    torch.testing.assert_close(torch.stack(per_codebook), torch.stack(expected))
    torch.testing.assert_close(kl, torch.stack(expected).mean())
