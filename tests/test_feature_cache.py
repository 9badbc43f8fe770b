"""Feature cache of the frozen base: a hit is exactly what the base computes, misses are
computed and stored, generation never uses it, and bad entries or a full cache never break a step."""
import pytest
import torch

from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.models.tiny import build_tiny_musicgen


pytestmark = pytest.mark.usefixtures('single_thread_torch')


@pytest.fixture
def model(perturb_extension):
    extended = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), num_additional_layers=2)
    perturb_extension(extended.lm)  # new layers that change the logits
    return extended


class BaseCalls:
    """Batch sizes the frozen base transformer was run with."""
    def __init__(self, lm):
        self.sizes = []
        lm.base_transformer.register_forward_hook(lambda module, args, output: self.sizes.append(args[0].shape[0]))


def entries(cache):
    return sorted(cache.folder.rglob('*.pt'))


def test_cold_and_warm_passes_equal_the_uncached_logits(model, tmp_path, model_logits):
    reference = model_logits(model)
    cache = model.lm.use_feature_cache(tmp_path)
    calls = BaseCalls(model.lm)
    cold = model_logits(model)
    assert cache.take_counts() == (0, 2) and calls.sizes == [2]
    assert len(entries(cache)) == 2
    warm = model_logits(model)
    assert cache.take_counts() == (2, 0) and calls.sizes == [2], "a warm pass must not run the base"
    assert torch.equal(cold, reference) and torch.equal(warm, reference)


def test_an_entry_is_the_example_base_output_in_full_precision(model, tmp_path, model_logits):
    cache = model.lm.use_feature_cache(tmp_path)
    captured = []
    model.lm.base_transformer.register_forward_hook(lambda module, args, output: captured.append(output))
    model_logits(model, frames=20)
    stored = [torch.load(path, weights_only=True)['hidden'] for path in entries(cache)]
    steps = captured[0].shape[1]  # the 20 frames in the codebook pattern's layout
    assert steps >= 20 and captured[0].shape[-1] == model.lm.dim
    # Rows of the batch, in any order, each [S, D] in float32: 4 * D bytes per token on disk.
    assert sorted(tuple(row.shape) for row in stored) == [(steps, model.lm.dim)] * 2
    assert all(row.dtype == torch.float32 for row in stored)
    assert sorted(row.sum().item() for row in stored) == sorted(row.sum().item() for row in captured[0])
    assert all(path.stat().st_size < steps * model.lm.dim * 4 + 2048 for path in entries(cache))


def test_training_gradients_are_the_same_with_cache_hits(model, tmp_path, condition_tensors, random_codes):
    codes = random_codes(model.lm)
    conditions = condition_tensors(model)

    def gradients():
        model.lm.train()
        model.lm.zero_grad(set_to_none=True)
        output = model.lm.compute_predictions(codes, [], condition_tensors=conditions)
        output.logits.nan_to_num().square().mean().backward()
        return [p.grad.clone() for p in model.lm.trainable_parameters()]

    reference = gradients()
    cache = model.lm.use_feature_cache(tmp_path)
    gradients()  # cold: fills the cache
    assert cache.take_counts() == (0, 2)
    warm = gradients()
    assert cache.take_counts() == (2, 0)
    assert all(torch.equal(a, b) for a, b in zip(reference, warm))


def test_only_missing_examples_run_through_the_base(model, tmp_path, model_logits):
    reference = model_logits(model, batch=3)
    cache = model.lm.use_feature_cache(tmp_path)
    model_logits(model, batch=2)  # stores examples 0 and 1 (same codes and conditions as rows 0, 1 of 3)
    calls = BaseCalls(model.lm)
    cache.take_counts()
    logits = model_logits(model, batch=3)
    assert cache.take_counts() == (2, 1) and calls.sizes == [1]
    # Row 2 was computed in a batch of 1, not 3: the same up to float rounding.
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)


def test_other_inputs_or_another_base_are_misses(model, tmp_path, condition_tensors, lm_logits, model_logits,
                                                 random_codes):
    cache = model.lm.use_feature_cache(tmp_path)
    model_logits(model, seed=0)
    cache.take_counts()
    model_logits(model, seed=1)  # other codes
    assert cache.take_counts() == (0, 2)
    conditions = {name: (embeds + 1.0, mask) for name, (embeds, mask) in condition_tensors(model).items()}
    lm_logits(model.lm, conditions, random_codes(model.lm, seed=0))  # same codes, other conditions
    assert cache.take_counts() == (0, 2)
    other = ExtendedMusicGen.from_base(build_tiny_musicgen('text', seed=1), num_additional_layers=2)
    other_cache = other.lm.use_feature_cache(tmp_path)
    assert other_cache.folder != cache.folder
    model_logits(other)
    assert other_cache.take_counts() == (0, 2)


def test_an_unreadable_entry_is_recomputed_and_rewritten(model, tmp_path, model_logits):
    reference = model_logits(model)
    cache = model.lm.use_feature_cache(tmp_path)
    model_logits(model)
    damaged = entries(cache)[0]
    damaged.write_bytes(b'half a file')
    cache.take_counts()
    torch.testing.assert_close(model_logits(model), reference, rtol=0, atol=1e-5)  # one row in a batch of 1
    assert cache.take_counts() == (1, 1)
    assert torch.load(damaged, weights_only=True)['hidden'].shape[-1] == model.lm.dim


def test_max_size_stops_adding_entries_but_not_training(model, tmp_path, model_logits):
    reference = model_logits(model)
    cache = model.lm.use_feature_cache(tmp_path, max_bytes=0)
    assert torch.equal(model_logits(model), reference)
    assert entries(cache) == [] and not cache.writing


def test_a_tiny_bound_is_never_passed_and_logged_once(model, tmp_path, model_logits, caplog):
    """Three batches of two new examples into a bound of two and a half entries: two are written,
    the folder stays under the bound, one log line says so, and every step still gets the base's output."""
    from audiocraft_ext.models.feature_cache import folder_bytes
    unbounded = model.lm.use_feature_cache(tmp_path / 'unbounded')
    model_logits(model)
    entry = max(path.stat().st_size for path in entries(unbounded))
    bound = int(2.5 * entry)
    cache = model.lm.use_feature_cache(tmp_path / 'bounded', max_bytes=bound)
    with caplog.at_level('WARNING', logger='audiocraft_ext.models.feature_cache'):
        for seed in range(3):
            model.lm.use_feature_cache(None)
            reference = model_logits(model, seed=seed)
            model.lm.transformer.feature_cache = cache
            assert torch.equal(model_logits(model, seed=seed), reference)
    assert len(entries(cache)) == 2 and folder_bytes(cache.folder) <= bound
    assert not list(cache.folder.rglob('.*'))  # no temporary left behind
    reached = [record for record in caplog.records if 'reached its bound' in record.getMessage()]
    assert len(reached) == 1 and not cache.writing
    cache.take_counts()
    model_logits(model, seed=0)  # the stored entries are still read
    assert cache.take_counts() == (2, 0)


def test_generation_runs_the_base_and_stores_nothing(model, tmp_path):
    model.set_generation_params(duration=0.2, use_sampling=False)
    expected = model.generate(['tiny prompt'])
    cache = model.lm.use_feature_cache(tmp_path)
    assert torch.equal(model.generate(['tiny prompt']), expected)
    assert entries(cache) == [] and cache.take_counts() == (0, 0)


def test_turned_off_with_none(model, tmp_path, model_logits):
    cache = model.lm.use_feature_cache(tmp_path)
    assert model.lm.use_feature_cache(None) is None
    model_logits(model)
    assert entries(cache) == []
