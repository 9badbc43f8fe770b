"""How the solver reads checkpoints: AudioCraft's `continue_from` resolution, for our Dora folder,
and its loading, without unpickling code.

The checkpoint format itself is `io.solver_checkpoints`; bases are resolved by
`io.base_reference` and built by `models`.
"""
from pathlib import Path
import typing as tp

from ..io.base_reference import SIG_PREFIX
from ..io.errors import CheckpointError
from ..io.solver_checkpoints import is_solver_checkpoint
from ..io.torch_files import read_torch_file


def load_checkpoint(checkpoint_path: Path, is_sharded: bool = False) -> tp.Any:
    """`audiocraft.utils.checkpoint.load_checkpoint` that never unpickles code (with fsdp.use, this rank's
    `checkpoint.th.RANK`), and refuses a checkpoint of another solver (e.g. `continue_from` a MusicGen's)
    before AudioCraft reads it."""
    state = read_torch_file(checkpoint_path, 'training checkpoint')
    if not is_solver_checkpoint(state):
        raise CheckpointError(f"{checkpoint_path} is not a checkpoint of ExtendedMusicGenSolver (no base_model entry): "
                              "continue_from takes a run of this solver. To train new layers on a MusicGen "
                              "checkpoint, pass it as pretrained_model_checkpoint instead.")
    return state


def resolve_checkpoint_path(dora_dir: tp.Union[str, Path]) -> tp.Callable[..., tp.Optional[Path]]:
    """`audiocraft.utils.checkpoint.resolve_checkpoint_path` for the Dora folder `dora_dir`.

    AudioCraft's version imports `audiocraft.train`, which fails on a pip install of AudioCraft
    (its `config/` tree is not installed), and reads that module's Dora folder, not ours.
    """
    from audiocraft.environment import AudioCraftEnvironment
    from audiocraft.utils.checkpoint import checkpoint_name

    def resolve(sig_or_path: tp.Union[str, Path], name: tp.Optional[str] = None,
                use_fsdp: bool = False) -> tp.Optional[Path]:
        sig_or_path = str(sig_or_path)
        if sig_or_path.startswith(SIG_PREFIX):
            path = Path(dora_dir) / 'xps' / sig_or_path[len(SIG_PREFIX):]
        else:
            path = AudioCraftEnvironment.resolve_reference_path(Path(sig_or_path))
        if path.is_dir():
            path = path / checkpoint_name(name, use_fsdp=use_fsdp)
        return path if path.exists() else None
    return resolve
