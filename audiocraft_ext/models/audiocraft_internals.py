"""Every use of AudioCraft's private members, in one place.

Where AudioCraft 1.3.0 offers a hook (a method to override, a constructor argument) we use it.
These few things have none; each is named here with why we need it, and
tests/test_audiocraft_internals.py fails loudly, naming the member, if an AudioCraft upgrade
moves one.
"""
from contextlib import contextmanager
import hashlib
import typing as tp

import torch

from audiocraft.models.lm import LMModel
from audiocraft.modules.streaming import StreamingModule
from audiocraft.utils import checkpoint as audiocraft_checkpoint

# The message `MusicGenSolver.run_step` raises when float16's GradScaler skipped a step.
DIVERGED_MESSAGE = "Model probably diverged."


def is_streaming(module: StreamingModule) -> bool:
    """Whether `module` is inside `with module.streaming():` (AudioCraft keeps it private)."""
    return module._is_streaming


def adopt_fsdp_slot(lm: LMModel) -> None:
    """`LMModel.compute_predictions` reads `self._fsdp`; a model built without `LMModel.__init__` needs it."""
    lm.__dict__['_fsdp'] = None


def melody_conditioner_for_inference(lm: LMModel) -> None:
    """What `MusicGen.get_pretrained` does to the chroma conditioner of a model built for inference."""
    if 'self_wav' in lm.condition_provider.conditioners:
        conditioner = lm.condition_provider.conditioners['self_wav']
        conditioner.match_len_on_eval = True
        conditioner._use_masking = False


@contextmanager
def checkpoint_io(save: tp.Callable[..., None], load: tp.Callable[..., tp.Any],
                  resolve: tp.Callable[..., tp.Any]) -> tp.Iterator[None]:
    """Inside the block, AudioCraft's solvers save, load and find checkpoints with these functions.

    `StandardSolver.save_checkpoints` / `load_checkpoints` call module functions of
    `audiocraft.utils.checkpoint` with no hook to replace them: `_safe_save_checkpoint` (the
    write), `load_checkpoint` (a `torch.load` that follows TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) and
    `resolve_checkpoint_path` (which imports `audiocraft.train` and its Dora folder).
    """
    names = {'_safe_save_checkpoint': save, 'load_checkpoint': load, 'resolve_checkpoint_path': resolve}
    previous = {name: getattr(audiocraft_checkpoint, name) for name in names}
    for name, function in names.items():
        setattr(audiocraft_checkpoint, name, function)
    try:
        yield
    finally:
        for name, function in previous.items():
            setattr(audiocraft_checkpoint, name, function)


def set_ema_source(solver: tp.Any, name: str, module: tp.Any) -> None:
    """EMA over `module` for the state entry `name` (`StandardSolver` fills `_ema_sources` itself only
    from `register_ema`, which would average the frozen base too)."""
    solver._ema_sources[name] = module


def check_on_continue(solver: tp.Any, name: str) -> None:
    """Load the state entry `name` too when continuing from another run's best state (`continue_from`),
    so that its checks run (`StandardSolver` lists only the best-state keys there)."""
    solver._continue_best_source_keys = [*solver._continue_best_source_keys, name]


def euclidean_codebook(layer: tp.Any) -> tp.Any:
    """The `EuclideanCodebook` of one `VectorQuantization` layer of an RVQ (its buffers `embed`,
    `embed_avg`, `cluster_size` are what a k-means refit of the codebooks writes)."""
    return layer._codebook


def _local_model_hash(model: torch.nn.Module) -> str:
    """AudioCraft's `model_hash` (sha1 of every parameter's bytes), taking each `DTensor`'s local shard
    and copying each tensor first: numpy would pin the storage of gathered sharded layers, which FSDP
    must free."""
    from torch.distributed.tensor import DTensor
    hasher = hashlib.sha1()
    for param in model.parameters():
        tensor = param.to_local() if isinstance(param, DTensor) else param
        hasher.update(tensor.detach().to('cpu', copy=True).numpy().tobytes())
    return hasher.hexdigest()


def hash_local_shards_in_solver_logs() -> None:
    """`StandardSolver` logs `model_hash(self.model)` after `build_model`, on each checkpoint and on
    restore; AudioCraft's `model_hash` calls `.numpy()`, which the `DTensor`s of sharded new layers
    (`fsdp.use`) refuse. The name it calls, `audiocraft.solvers.base.model_hash`, becomes
    `_local_model_hash` (the same hash for plain tensors). No hook exists for it."""
    from audiocraft.solvers import base as audiocraft_solver_base  # the solvers, imported only when training
    assert hasattr(audiocraft_solver_base, 'model_hash'), "AudioCraft 1.3.0's solvers.base.model_hash moved"
    audiocraft_solver_base.model_hash = _local_model_hash
