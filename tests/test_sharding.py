"""`fsdp.use=true` (`solvers.sharding`): the new layers sharded across 2 CPU ranks (gloo), the frozen base
replicated, against an unsharded twin trained on the same batches in the same process.

The ranks are forked from the test process (no second import of AudioCraft) and meet in a FileStore
(no port). Each rank writes what it saw to `rank{R}.pt`; the assertions run in the test process.
"""
from pathlib import Path
import time
import traceback
import typing as tp

from omegaconf import ListConfig
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audiocraft_ext import ExtendedLMModel
from audiocraft_ext.io.errors import IntegrityError
from audiocraft_ext.models.tiny import build_tiny_musicgen
from audiocraft_ext.solvers import sharding

pytestmark = pytest.mark.usefixtures('single_thread_torch')

WORLD = 2
LR = 1e-3
STEPS = 3


def _run_ranks(target: tp.Callable[[int, Path], tp.Dict[str, tp.Any]], folder: Path,
               timeout: float = 120) -> tp.List[tp.Dict[str, tp.Any]]:
    """`target(rank, folder)` on WORLD forked ranks in one gloo group; their returned dicts, by rank."""
    store = folder / 'store'

    def main(rank: int) -> None:
        torch.set_num_threads(1)
        try:
            dist.init_process_group('gloo', store=dist.FileStore(str(store), WORLD), rank=rank, world_size=WORLD)
            result = target(rank, folder)
            dist.barrier()
            dist.destroy_process_group()
        except BaseException:  # noqa: B036 - reported to the test, which fails
            result = {'error': traceback.format_exc()}
        torch.save(result, folder / f'rank{rank}.pt')

    context = mp.start_processes(lambda rank: main(rank), nprocs=WORLD, join=False, start_method='fork')
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
        pass
    for process in context.processes:
        if process.is_alive():  # a rank waiting for another that failed: the files say why
            process.kill()
    results = []
    for rank in range(WORLD):
        path = folder / f'rank{rank}.pt'
        assert path.exists(), f"rank {rank} wrote nothing (exit code {context.processes[rank].exitcode})"
        results.append(torch.load(path, weights_only=True))
    for rank, result in enumerate(results):
        assert 'error' not in result, f"rank {rank}:\n{result['error']}"
    return results


def _build(seed: int = 0) -> tp.Tuple[tp.Any, ExtendedLMModel]:
    """A tiny text base and 2 new layers, deterministic; condition dropout off so that every forward
    of a model depends on its weights and batch only."""
    torch.manual_seed(seed)
    base = build_tiny_musicgen('text')
    lm = ExtendedLMModel(base.lm, 2)
    lm.cfg_dropout.p = 0.0
    return base, lm


def _batch(lm: ExtendedLMModel, base: tp.Any, step: int) -> tp.Tuple[torch.Tensor, tp.List[tp.Any]]:
    generator = torch.Generator().manual_seed(step)
    codes = torch.randint(0, lm.card, (2, lm.num_codebooks, 12), generator=generator)  # [B, K, T]
    attributes, _ = base._prepare_tokens_and_attributes(['a tiny prompt', 'another one'], None)
    return codes, attributes


def _train_step(lm: ExtendedLMModel, base: tp.Any, optimizer: torch.optim.Optimizer, step: int) -> float:
    """One step as the solver runs it: the extended logits and the base's from one forward, a
    second forward (the forgetting control's replay), clipping, AdamW."""
    lm.train()
    codes, attributes = _batch(lm, base, step)
    output, base_logits = lm.compute_predictions_with_base(codes, attributes)
    loss = torch.nn.functional.cross_entropy(output.logits[output.mask], codes[output.mask])
    replay = lm.compute_predictions(codes.flip(-1), attributes)
    loss = loss + 0.5 * torch.nn.functional.cross_entropy(replay.logits[replay.mask], codes.flip(-1)[replay.mask])
    optimizer.zero_grad()
    loss.backward()
    if sharding.is_sharded(lm):
        sharding.clip_grad_norm_(lm, 1.0)
    else:
        torch.nn.utils.clip_grad_norm_(lm.trainable_parameters(), 1.0)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _logits(lm: ExtendedLMModel, base: tp.Any, step: int = 99) -> torch.Tensor:
    """Eval-mode logits [B, K, T, card] of fixed codes, invalid positions zeroed."""
    lm.eval()
    codes, attributes = _batch(lm, base, step)
    return lm.compute_predictions(codes, attributes).logits.nan_to_num()


def _frozen(lm: ExtendedLMModel) -> tp.Dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in lm.state_dict().items()
            if not name.startswith('transformer.extension.')}


def _sharded_training(rank: int, folder: Path) -> tp.Dict[str, tp.Any]:
    from audiocraft.optim.ema import ModuleDictEMA
    from audiocraft.solvers import base as audiocraft_base
    out: tp.Dict[str, tp.Any] = {'folder': str(folder)}
    twin_base, twin = _build()
    base, lm = _build()
    out['base_logits'] = _logits(lm, base)
    sharding.wrap_extension(lm)
    # Built from the sharded parameters; betas an OmegaConf list, as AudioCraft's `get_optimizer` passes them.
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=LR, betas=ListConfig([0.9, 0.999]))
    twin_optimizer = torch.optim.AdamW(twin.trainable_parameters(), lr=LR)
    in_proj = dict(lm.extension.named_parameters())['layers.0.self_attn.in_proj_weight']
    out['in_proj_shapes'] = (tuple(in_proj.shape), tuple(in_proj.to_local().shape))
    out['step0_logits'] = _logits(lm, base)
    lm.eval()
    with torch.no_grad():
        codes, attributes = _batch(lm, base, 5)
        extended, base_logits = lm.compute_predictions_with_base(codes, attributes)
    out['step0_with_base'] = (extended.logits.nan_to_num(), base_logits.nan_to_num())
    # What StandardSolver.run asks before the first step: no optimizer state yet, and none made.
    out['optimizer_before_training'] = sharding.OptimizerState(lm, optimizer).state_dict()
    frozen = _frozen(lm)
    _logits(lm, base)  # the layers gathered, as after validation: hashing, EMA and loads must cope
    out['model_hash'] = audiocraft_base.model_hash(lm)  # what StandardSolver logs
    ema = ModuleDictEMA(torch.nn.ModuleDict({'model': sharding.ema_source(lm)}), decay=0.5)
    twin_ema = ModuleDictEMA(torch.nn.ModuleDict({'model': twin.extension}), decay=0.5)
    out['losses'] = []
    for step in range(STEPS):
        out['losses'].append((_train_step(twin, twin_base, twin_optimizer, step),
                              _train_step(lm, base, optimizer, step)))
        ema.step()
        twin_ema.step()
        _logits(lm, base)  # validation between steps leaves the layers gathered
    out['frozen_unchanged'] = all(torch.equal(frozen[name], tensor) for name, tensor in _frozen(lm).items())
    out['trained_logits'] = (_logits(twin, twin_base), _logits(lm, base))
    out['full'] = sharding.full_state_dict(lm)
    out['twin'] = twin.extension_state_dict()
    # EMA: the shards swap in, the full EMA comes out, the weights swap back.
    weights = sharding.full_state_dict(lm)
    sharding.load_state_dict(lm, ema.state_dict()['state']['model'], 'the EMA')
    out['ema_full'] = sharding.full_state_dict(lm)
    out['twin_ema'] = {name: value.clone() for name, value in twin_ema.state_dict()['state']['model'].items()}
    sharding.load_state_dict(lm, weights, 'the weights')
    out['after_swap_logits'] = _logits(lm, base)
    # A checkpoint (AudioCraft's fsdp layout: one file per rank) resumes: same weights, same steps after.
    path = folder / f'checkpoint.th.{rank}'
    torch.save({'model': sharding.full_state_dict(lm), 'optimizer': sharding.OptimizerState(lm, optimizer).state_dict(),
                'ema': {'state': {'model': dict(ema.state_dict()['state']['model'])}, 'count': ema.count}}, path)
    state = torch.load(path, weights_only=True)
    resumed_base, resumed = _build(seed=1)  # other initial weights: the load must replace them
    sharding.wrap_extension(resumed)
    resumed_optimizer = torch.optim.AdamW(resumed.trainable_parameters(), lr=LR)
    _logits(resumed, resumed_base)  # gathered layers must not hide what is loaded
    sharding.load_state_dict(resumed, state['model'], str(path))
    sharding.OptimizerState(resumed, resumed_optimizer).load_state_dict(state['optimizer'])
    out['resumed_logits'] = (_logits(lm, base), _logits(resumed, resumed_base))
    out['after_resume'] = [(_train_step(lm, base, optimizer, step),
                            _train_step(resumed, resumed_base, resumed_optimizer, step))
                           for step in range(STEPS, STEPS + 2)]
    out['after_resume_full'] = (sharding.full_state_dict(lm), sharding.full_state_dict(resumed))
    # The gathered state is an unsharded model's: loaded into one, it gives the same logits and generations.
    full = sharding.full_state_dict(lm)
    check_base, check = _build()
    check.load_extension_state_dict(_broadcast(full))
    out['exported_logits'] = (_logits(lm, base), _logits(check, check_base))
    codes, attributes = _batch(lm, base, 7)
    torch.manual_seed(0)
    with torch.no_grad():
        out['generated'] = (lm.generate(None, attributes, max_gen_len=6, use_sampling=False),
                            check.generate(None, attributes, max_gen_len=6, use_sampling=False))
    # Damaged inputs are refused on every rank, before anything is loaded.
    bad = dict(full)
    if bad:
        bad.pop('layers.0.linear1.weight')
    out['errors'] = []
    for what, source in (('full', bad), ('local', {sharding.LOCAL_PREFIX + 'layers.0.linear1.weight': torch.zeros(3)})):
        try:
            sharding.load_state_dict(lm, source, f'a damaged {what} state')
        except IntegrityError as error:
            out['errors'].append(str(error))
    out['after_errors_logits'] = _logits(lm, base)
    # Gathered, the new layers run on one rank alone (as rank 0 generates the replay set).
    sharding.reshard(lm)
    sharding.gather(lm)
    out['alone_logits'] = _logits(lm, base) if rank == 0 else None
    dist.barrier()
    return out


def _broadcast(state: tp.Dict[str, torch.Tensor]) -> tp.Dict[str, torch.Tensor]:
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@pytest.fixture(scope='module')
def ranks(tmp_path_factory) -> tp.List[tp.Dict[str, tp.Any]]:
    return _run_ranks(_sharded_training, tmp_path_factory.mktemp('sharding'))


def test_new_layers_are_sharded_and_step_0_is_the_base(ranks):
    for out in ranks:
        assert out['in_proj_shapes'] == ((96, 32), (48, 32))  # [3D, D], each rank keeping half the rows
        assert torch.equal(out['step0_logits'], out['base_logits'])
        extended, base = out['step0_with_base']
        assert torch.equal(extended, base)
        assert isinstance(out['model_hash'], str)
        assert out['optimizer_before_training'] == {}


def test_sharded_training_matches_the_unsharded_twin_and_changes_only_new_layers(ranks):
    for out in ranks:
        twin, sharded = zip(*out['losses'])
        assert sharded == pytest.approx(twin, abs=1e-5)
        assert twin[-1] != twin[0]
        assert out['frozen_unchanged']
        torch.testing.assert_close(*out['trained_logits'], atol=1e-5, rtol=1e-5)
    full, twin = ranks[0]['full'], ranks[0]['twin']
    assert ranks[1]['full'] == {}  # gathered on rank 0 only
    assert full.keys() == twin.keys()
    for name, value in twin.items():
        assert full[name].shape == value.shape and full[name].dtype == value.dtype and full[name].device.type == 'cpu'
        # AdamW divides by sqrt(v): gradients averaged across ranks round differently, which moves a
        # weight whose gradient is ~0 by up to LR per step.
        torch.testing.assert_close(full[name], value, atol=STEPS * LR, rtol=1e-4)
    assert any(not torch.equal(value, torch.zeros_like(value)) for name, value in full.items() if 'linear2' in name)


def test_ema_of_the_shards_is_the_unsharded_ema_and_swaps_back(ranks):
    ema, twin = ranks[0]['ema_full'], ranks[0]['twin_ema']
    assert ema.keys() == twin.keys()
    for name, value in twin.items():
        torch.testing.assert_close(ema[name], value, atol=STEPS * LR, rtol=1e-4)
    for out in ranks:
        torch.testing.assert_close(out['after_swap_logits'], out['trained_logits'][1], atol=0, rtol=0)


def test_a_checkpoint_of_the_sharded_run_resumes_and_exports_as_an_unsharded_model(ranks):
    folder = Path(ranks[0]['folder'])
    # Read here, in a process outside the run (as an export reads it): plain tensors and containers only.
    rank0 = torch.load(folder / 'checkpoint.th.0', weights_only=True)
    assert rank0['model'].keys() == ranks[0]['twin'].keys()
    assert {type(value) for value in rank0['optimizer']['state'].values()} == {dict}
    assert all(type(tensor) is torch.Tensor for entry in rank0['optimizer']['state'].values()
               for tensor in entry.values())
    assert torch.load(folder / 'checkpoint.th.1', weights_only=True)['optimizer'] == {}
    for out in ranks:
        torch.testing.assert_close(*out['resumed_logits'], atol=0, rtol=0)
        assert [a for a, _ in out['after_resume']] == [b for _, b in out['after_resume']]
        torch.testing.assert_close(*out['exported_logits'], atol=1e-6, rtol=1e-6)
        assert torch.equal(*out['generated'])
    continued, resumed = ranks[0]['after_resume_full']
    assert continued.keys() == resumed.keys()
    for name in continued:
        assert torch.equal(continued[name], resumed[name]), name


def test_damaged_states_are_refused_on_every_rank_and_change_nothing(ranks):
    for out in ranks:
        full, local = out['errors']
        assert full.startswith("The new-layer weights of a damaged full state do not fit its extension config "
                               "(missing: layers.0.linear1.weight)")
        assert local.startswith("a damaged local state is not this rank's shard of the new layers")
        torch.testing.assert_close(out['after_errors_logits'], out['exported_logits'][0], atol=0, rtol=0)


def test_gathered_new_layers_run_on_one_rank_alone(ranks):
    torch.testing.assert_close(ranks[0]['alone_logits'], ranks[0]['exported_logits'][0], atol=0, rtol=0)


# ---- the config check (no process group) --------------------------------------------------------

def _fsdp_cfg(**fsdp: tp.Any) -> tp.Any:
    from omegaconf import OmegaConf
    settings = dict(use=True, param_dtype='float32', reduce_dtype='float32', buffer_dtype='float32',
                    sharding_strategy='shard_grad_op', per_block=True)
    settings.update(fsdp)
    return OmegaConf.create({'fsdp': settings})


def test_a_working_fsdp_config_and_fsdp_off_pass_the_check():
    sharding.check_fsdp_config(_fsdp_cfg(), world_size=2)
    sharding.check_fsdp_config(_fsdp_cfg(use=False, param_dtype='float16'), world_size=1)


@pytest.mark.parametrize('settings, world_size, message', [
    ({}, 1, "fsdp.use=true shards the new layers across ranks, but this run has one process"),
    ({'sharding_strategy': 'full_shard'}, 2, "fsdp.sharding_strategy=full_shard (AudioCraft refuses it for the LM"),
    ({'sharding_strategy': 'no_shard'}, 2, "fsdp.sharding_strategy=no_shard (it shards nothing"),
    ({'param_dtype': 'float16'}, 2, "fsdp.param_dtype=float16: set fsdp.param_dtype=float32."),
    ({'reduce_dtype': 'bfloat16'}, 2, "fsdp.reduce_dtype=bfloat16: set fsdp.reduce_dtype=float32."),
], ids=['one process', 'full_shard', 'no_shard', 'float16 parameters', 'bfloat16 reduction'])
def test_fsdp_settings_that_cannot_work_are_refused(settings, world_size, message):
    with pytest.raises(sharding.ShardingConfigError) as error:
        sharding.check_fsdp_config(_fsdp_cfg(**settings), world_size=world_size)
    assert str(error.value).startswith(message)


def test_the_config_check_counts_the_ranks_of_this_process():
    assert not dist.is_initialized()
    with pytest.raises(sharding.ShardingConfigError, match='one process'):
        sharding.check_fsdp_config(_fsdp_cfg())
