"""`fsdp.use=true`: the new layers sharded across ranks with PyTorch FSDP; the frozen base replicated.

What each rank holds, with W ranks and an extension of P parameters (float32):

    new layers          P / W weights, P / W gradients, 2P / W AdamW moments (FSDP shards all three);
                        during a step's forward and backward the new layers are gathered whole
                        (`reshard_after_forward=False`, AudioCraft's `shard_grad_op`)
    frozen base         whole on every rank, no gradient, no optimizer state (not wrapped)
    EMA (optim.ema)     the rank's shard of the new layers (`ema_source`)

The frozen base stays unsharded because that takes less memory per rank: sharded with
`shard_grad_op`, each base layer is gathered in the forward and, having no gradient, is not freed
before the step ends, so a rank holds the whole base *and* its shard (measured on 2 CPU ranks, a
210 MiB base, 64 MiB of new layers, peaks of live tensors counted by torch's `MemTracker`: 519 MiB
against 415 MiB with the base unsharded, 479 MiB with nothing sharded). Only `full_shard`, which
gathers every base layer again on every forward, uses less (327 MiB), and AudioCraft refuses it for
the LM because generation would gather every layer at every time step.

How: torch's `fully_shard` (FSDP2), one FSDP unit per new `StreamingTransformerLayer` as
AudioCraft's `wrap_with_fsdp` makes one per layer (`fsdp.per_block`), the extension the FSDP root.
AudioCraft's `wrap_with_fsdp` (FSDP1) does not run on CPU (it asserts a CUDA device per rank, and
torch 2.9's FSDP1 refuses a CPU module unless `device_id=cpu` is forced; forced, its
`shard_grad_op` with AudioCraft's `use_orig_params=True` and per-layer units gives wrong gradients
from the second step), while `fully_shard` runs on CPU ranks (gloo) and CUDA alike and matches an
unsharded run.

Checkpoints (AudioCraft's `fsdp.use` layout: every rank writes `checkpoint.th.RANK`): the `model`
entry is the new layers' full state dict, gathered on rank 0 (`full_state_dict`), with the keys and
shapes of an unsharded run's, so `checkpoint.th` exports as an unsharded run's does; other ranks
write an empty dict. The optimizer entry is gathered on rank 0 the same way (`OptimizerState`); the
EMA entry holds each rank's shard: a sharded run resumes with the same number of ranks. No entry
holds a `DTensor`.

A forward without backward leaves the new layers gathered; `reshard` frees them (every load and
state dict here does it first) and `gather` gathers them on purpose, before stages where ranks run
forwards alone or unevenly (rank 0 generating the replay set, evaluation, generation).

Every function that gathers or scatters is collective: call it on every rank, in the same order.
"""
import typing as tp

from audiocraft.modules.transformer import StreamingTransformerLayer
import flashy
from omegaconf import DictConfig, ListConfig, OmegaConf
import torch
from torch import nn
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..io.errors import IntegrityError
from ..models.audiocraft_internals import hash_local_shards_in_solver_logs

# The prefix of the keys of a rank's own shard (what the EMA holds, `ShardView`): `load_state_dict`
# tells such a state from a full state dict by it.
LOCAL_PREFIX = 'local_shard.'
# `fsdp.sharding_strategy` values: what the new layers get. AudioCraft refuses `full_shard` for its LM.
STRATEGIES = ('shard_grad_op',)
_FLOAT32 = 'float32'


class ShardingConfigError(ValueError):
    """`fsdp.*` settings the extended solver cannot train with."""


def check_fsdp_config(cfg: tp.Any, world_size: tp.Optional[int] = None) -> None:
    """Refuse `fsdp.*` settings (with `fsdp.use=true`) that cannot work, before anything is built.

    Args:
        cfg: the solver config (reads `fsdp.*`).
        world_size: number of ranks (default: torch.distributed's, 1 when not initialised).
    Raises:
        ShardingConfigError naming the key and what to set instead.
    """
    fsdp = cfg.fsdp
    if not fsdp.use:
        return
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world_size < 2:
        raise ShardingConfigError(
            "fsdp.use=true shards the new layers across ranks, but this run has one process: launch one process per "
            "GPU (dora run -d ..., or torchrun --nproc-per-node N -m audiocraft_ext.train ...), or set fsdp.use=false.")
    strategy = str(fsdp.get('sharding_strategy'))
    if strategy not in STRATEGIES:
        why = {'full_shard': "AudioCraft refuses it for the LM: generation would gather every layer at every time step",
               'no_shard': "it shards nothing: that is fsdp.use=false, where flashy averages the gradients of the "
                           "replicated new layers"}.get(strategy, 'unknown strategy')
        raise ShardingConfigError(f"fsdp.sharding_strategy={strategy} ({why}): use "
                                  f"fsdp.sharding_strategy={STRATEGIES[0]}.")
    for key in ('param_dtype', 'reduce_dtype', 'buffer_dtype'):
        if str(fsdp.get(key)) != _FLOAT32:
            raise ShardingConfigError(
                f"fsdp.{key}={fsdp.get(key)}: set fsdp.{key}=float32. FSDP's mixed precision would cover the new "
                "layers only (the frozen base is not wrapped), and AudioCraft would keep the best state, hence the "
                "exported extension, in fsdp.param_dtype. For mixed precision use autocast=true "
                "autocast_dtype=bfloat16, as without fsdp.")


def wrap_extension(lm: tp.Any, per_block: bool = True) -> nn.Module:
    """Shard the new layers of `lm` (an `ExtendedLMModel`) across all ranks, in place. Collective.

    Rank 0's new layers are broadcast first, so every rank starts from the same weights (FSDP1's
    `sync_module_states`). Each new layer becomes one FSDP unit (`per_block`, as AudioCraft's
    `fsdp.per_block`), the extension the root; the frozen base and heads are not touched.
    `lm.extension` stays the same module (now also an `FSDPModule`): its parameters become
    `DTensor`s sharded on dim 0, e.g. a [3D, D] in_proj_weight holds [3D / W, D] on each rank.

    Build the optimizer after this call, from `lm.trainable_parameters()`: after a forward without
    backward (validation, generation) the layers hold gathered copies in place of the sharded
    parameters until `reshard`, and an optimizer built then would update copies FSDP throws away.

    Returns:
        the extension.
    """
    assert not is_sharded(lm), "the new layers are already sharded"
    hash_local_shards_in_solver_logs()
    extension = lm.extension
    flashy.distrib.broadcast_tensors(extension.state_dict().values())
    device = next(extension.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if per_block:
        for layer in extension.modules():
            if isinstance(layer, StreamingTransformerLayer):
                fully_shard(layer, mesh=mesh, reshard_after_forward=False)
    fully_shard(extension, mesh=mesh, reshard_after_forward=False)
    return extension


def is_sharded(lm: tp.Any) -> bool:
    """Whether the new layers of `lm` are sharded (`wrap_extension`)."""
    return isinstance(lm.extension, FSDPModule)


def reshard(lm: tp.Any) -> None:
    """Free the gathered copies of the new layers (left by a forward without backward: validation,
    generation), so that parameters are the sharded `DTensor`s the optimizer and loads work on."""
    for module in lm.extension.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gather(lm: tp.Any) -> None:
    """Gather the new layers whole on every rank, as they stay until `reshard` or a backward.
    Collective: call it on every rank before a stage whose forwards some ranks may run alone or more
    often than others (evaluation, generation), which then need no communication."""
    for module in lm.extension.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def full_state_dict(lm: tp.Any) -> tp.Dict[str, torch.Tensor]:
    """The new layers' full state dict on rank 0 (CPU tensors, keys and shapes of an unsharded
    `lm.extension_state_dict()`); an empty dict on the other ranks. Collective."""
    reshard(lm)
    state = get_model_state_dict(lm.extension, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else {}


def _local_tensors(lm: tp.Any) -> tp.Iterator[tp.Tuple[str, torch.Tensor]]:
    """(name, this rank's shard, sharing the parameter's storage) of every floating-point parameter
    and buffer: what AudioCraft's EMA averages."""
    reshard(lm)
    for name, tensor in [*lm.extension.named_parameters(), *lm.extension.named_buffers()]:
        if tensor.is_floating_point():
            yield name, tensor.to_local() if isinstance(tensor, DTensor) else tensor


def load_state_dict(lm: tp.Any, state: tp.Mapping[str, torch.Tensor], source: str = 'the state dict') -> None:
    """Load into the sharded new layers either a full state dict (`full_state_dict`'s: read on
    rank 0, broadcast, each rank keeping its shard; collective) or this rank's shard (keys
    `LOCAL_PREFIX + name`, as the EMA of a `ShardView` holds them; not collective).

    Raises:
        IntegrityError on every rank (a full state dict) naming the missing, unexpected or
        misshapen keys of rank 0's `state`.
    """
    if any(key.startswith(LOCAL_PREFIX) for key in state):
        _load_local(lm, state, source)
        return
    reshard(lm)
    problems = _problems(lm, state) if dist.get_rank() == 0 else ''
    problems = _broadcast_object(problems)
    if problems:
        raise IntegrityError(f"The new-layer weights of {source} do not fit its extension config ({problems}): "
                             "the file is damaged or was edited; use another copy.")
    set_model_state_dict(lm.extension, dict(state) if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _broadcast_object(value: tp.Any) -> tp.Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _problems(lm: tp.Any, state: tp.Mapping[str, torch.Tensor]) -> str:
    """What keeps `state` from being the new layers' full state dict ('' if nothing)."""
    expected = {name: tuple(tensor.shape) for name, tensor in lm.extension.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(f'{key} {tuple(state[key].shape)} (expected {shape})' for key, shape in expected.items()
                       if key in state and tuple(state[key].shape) != shape)
    return '; '.join(f'{what}: {", ".join(keys[:5])}{" ..." if len(keys) > 5 else ""}'
                     for what, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', misshapen))
                     if keys)


@torch.no_grad()
def _load_local(lm: tp.Any, state: tp.Mapping[str, torch.Tensor], source: str) -> None:
    tensors = dict(_local_tensors(lm))
    keys = {LOCAL_PREFIX + name for name in tensors}
    wrong = sorted(keys.symmetric_difference(state.keys()))
    wrong += sorted(key for key in keys & state.keys()
                    if state[key].shape != tensors[key[len(LOCAL_PREFIX):]].shape)
    if wrong:
        raise IntegrityError(f"{source} is not this rank's shard of the new layers ({', '.join(wrong[:5])}): it was "
                             "written by a run with another number of ranks or another extension.")
    for name, tensor in tensors.items():
        tensor.copy_(state[LOCAL_PREFIX + name])


class OptimizerState:
    """The optimizer's entry of the solver state (a flashy StateDictSource) when the new layers are
    sharded: on rank 0 the whole optimizer state, gathered (torch's `get_optimizer_state_dict`: plain
    CPU tensors, keyed by parameter name), {} on the other ranks; loaded back from rank 0's broadcast.
    So no checkpoint holds a `DTensor`, which only a process of the same sharded run could read, and
    rank 0's `checkpoint.th` reads like an unsharded run's. Both methods are collective."""
    def __init__(self, lm: tp.Any, optimizer: torch.optim.Optimizer):
        self.lm, self.optimizer = lm, optimizer
        for group in optimizer.param_groups:  # AudioCraft passes e.g. `betas` as an OmegaConf list, which
            for key, value in group.items():  # torch's state-dict functions cannot copy: made plain
                if isinstance(value, (DictConfig, ListConfig)):
                    group[key] = OmegaConf.to_container(value, resolve=True)

    def state_dict(self) -> tp.Dict[str, tp.Any]:
        if not self.optimizer.state:  # before the first step: nothing to gather (torch's function would
            return {}                 # take a step of zero gradients to make a state, shifting AdamW's count)
        reshard(self.lm)
        state = get_optimizer_state_dict(self.lm.extension, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if dist.get_rank() == 0 else {}

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None:
        if not _broadcast_object(bool(state) if dist.get_rank() == 0 else None):
            return  # saved before the first step
        reshard(self.lm)
        set_optimizer_state_dict(self.lm.extension, self.optimizer, dict(state) if dist.get_rank() == 0 else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


class ShardView(nn.Module):
    """This rank's shard of the new layers as an `nn.Module` for AudioCraft's `ModuleDictEMA`
    (`ema_source`): its `named_parameters` are the shards, named `LOCAL_PREFIX + name`, so the EMA
    keeps 1 / W of the new layers per rank and swaps in through `load_state_dict`."""
    def __init__(self, lm: tp.Any):
        super().__init__()
        self.__dict__['lm'] = lm  # not a submodule: no parameter is registered twice

    def named_parameters(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Iterator[tp.Tuple[str, torch.Tensor]]:
        for name, tensor in _local_tensors(self.lm):
            yield LOCAL_PREFIX + name, tensor

    def named_buffers(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Iterator[tp.Tuple[str, torch.Tensor]]:
        return iter(())


def ema_source(lm: tp.Any) -> nn.Module:
    """What the EMA averages when the new layers are sharded (see `ShardView`)."""
    return ShardView(lm)


def clip_grad_norm_(lm: tp.Any, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the sharded new layers; the total norm of the whole
    gradient (every rank's shard), a plain scalar tensor. Collective."""
    norm = torch.nn.utils.clip_grad_norm_(lm.trainable_parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
