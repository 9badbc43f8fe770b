"""During a training step the frozen base keeps no activation for backward and gets no gradient.

This is where the extended model's speed and memory win over full fine-tuning comes from
(docs/BENCHMARKS.md measures it). The tensors autograd saves for backward are counted with
`torch.autograd.graph.saved_tensors_hooks` during the forward and loss of a training step, as
MusicGenSolver computes them. No timing here.
"""
import copy
import typing as tp

import pytest
import torch
from torch import nn

from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext.models.extended_lm import ExtendedLMModel
from audiocraft_ext.models.tiny import build_tiny_musicgen

from conftest import condition_tensors, random_codes

BASE_LAYERS, NEW_LAYERS = 4, 2


class _Features(nn.Module):
    """Replaces the base transformer: returns its precomputed output (no base layer runs)."""
    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor, *args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
        return self.features


def _loss(lm, codes, conditions) -> torch.Tensor:
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
        loss = _loss(lm.train(), codes, conditions)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return len(saved), sum(storages.values()), loss


@pytest.fixture(scope='module')
def setup():
    model = build_tiny_musicgen('text', num_layers=BASE_LAYERS)
    codes = random_codes(model.lm, batch=2, frames=16)
    conditions = condition_tensors(model, batch=2)  # fixed: no CFG dropout draw in the count
    return model, codes, conditions


def _extended(model) -> ExtendedLMModel:
    torch.manual_seed(0)
    return ExtendedLMModel(copy.deepcopy(model.lm), NEW_LAYERS)


def test_extended_step_saves_only_what_the_new_layers_and_heads_save(setup):
    model, codes, conditions = setup
    extended = _extended(model)
    count, nbytes, _ = _saved_for_backward(extended, codes, conditions)

    # The same new layers and frozen heads alone, fed the base's output as a constant.
    standalone = _extended(model)
    standalone.load_state_dict(extended.state_dict())
    captured = {}
    handle = standalone.base_transformer.register_forward_hook(
        lambda module, args, output: captured.setdefault('features', output))
    with torch.no_grad():
        _loss(standalone.train(), codes, conditions)
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


def test_backward_reaches_only_the_new_layers(setup):
    model, codes, conditions = setup
    extended = _extended(model)
    base_before = {name: p.detach().clone() for name, p in extended.base_state_dict().items()}
    _, _, loss = _saved_for_backward(extended, codes, conditions)
    loss.backward()
    new = {id(p) for p in extended.extension.parameters()}
    for name, parameter in extended.named_parameters():
        if id(parameter) in new:
            assert parameter.requires_grad and parameter.grad is not None, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in extended.extension.parameters())
    optimizer = torch.optim.AdamW(extended.trainable_parameters(), lr=1e-3)
    optimizer.step()
    for name, value in extended.base_state_dict().items():
        assert torch.equal(value, base_before[name]), name
