"""On-disk cache of the frozen base transformer's output: later passes over an example skip the base.

The base is frozen, so its output h [S, D] for one example is a fixed function of that example's
inputs: the embedded, fused codes x [S, D] and the cross-attention conditions c [S_c, D]. Where
the same examples come back (fixed segments and conditions, every validation pass), storing h
turns the base's forward into a file read.

An entry is keyed by the exact bytes of (x, c), the compute mode (device type, autocast dtype,
base weight dtype) and, through its folder, the base transformer's `weights_hash`. A hit is
therefore what the base computed for exactly these inputs: the cache cannot change what the new
layers see, only skip work. Anything that changes the inputs (another random segment, CFG or
attribute dropout, description augmentation, another padding length of the conditions in the
batch) is another key, i.e. a miss, computed and stored.

Layout: `<root>/<base hash>/<key[:2]>/<key>.pt`, each `{'hidden': h}` in the dtype the base
produced (float32 under autocast too): 4 * D bytes per token.
"""
import hashlib
import io
import logging
from pathlib import Path
import typing as tp

import torch

from audiocraft.modules.transformer import StreamingTransformer

from ..io.atomic import atomic_write
from ..io.hashing import weights_hash

logger = logging.getLogger(__name__)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def folder_bytes(folder: Path) -> int:
    """Bytes of the cache entries under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob('*.pt')) if folder.exists() else 0


class BaseFeatureCache:
    """Stores and replays the frozen base transformer's output per example.

    Args:
        root (str or Path): cache folder; entries of each base go to `root/<base hash>/`.
        base (StreamingTransformer): the frozen base transformer (its weights are hashed once).
        max_bytes (int, optional): the base's folder never holds more than this many bytes of
            entries: an entry that would pass it is not written, and no later one either (logged
            once; existing entries are still read, none is evicted). None: no limit.
    """
    def __init__(self, root: tp.Union[str, Path], base: StreamingTransformer,
                 max_bytes: tp.Optional[int] = None):
        self.folder = Path(root).expanduser() / weights_hash(base.state_dict())
        self.max_bytes = max_bytes
        self.size_bytes = folder_bytes(self.folder) if max_bytes is not None else 0
        self.writing = True
        self.hits = 0
        self.misses = 0
        self.bytes_written = 0

    # ---- keys and entries ---------------------------------------------------------------------
    def keys(self, x: torch.Tensor, cross_attention_src: tp.Optional[torch.Tensor],
             base: StreamingTransformer) -> tp.List[str]:
        """One key per example of x [B, S, D] and cross_attention_src [B, S_c, D] (or None)."""
        device_type = x.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        mode = f'{device_type}|{autocast}|{next(base.parameters()).dtype}|{x.dtype}|{tuple(x.shape[1:])}'
        if cross_attention_src is not None:
            mode += f'|{cross_attention_src.dtype}|{tuple(cross_attention_src.shape[1:])}'
        x_cpu = x.detach().cpu()
        cross_cpu = None if cross_attention_src is None else cross_attention_src.detach().cpu()
        keys = []
        for index in range(x.shape[0]):
            digest = hashlib.blake2b(mode.encode(), digest_size=20)
            digest.update(_tensor_bytes(x_cpu[index]))
            if cross_cpu is not None:
                digest.update(_tensor_bytes(cross_cpu[index]))
            keys.append(digest.hexdigest())
        return keys

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f'{key}.pt'

    def read(self, key: str) -> tp.Optional[torch.Tensor]:
        """The stored h [S, D] for `key`, or None when absent or unreadable (then recomputed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location='cpu', weights_only=True)['hidden']
        except Exception as error:  # a truncated file (e.g. power loss): a miss, overwritten below
            logger.warning("Unreadable feature cache entry %s (%s): recomputing it.", path, error)
            return None

    def write(self, key: str, hidden: torch.Tensor) -> None:
        """Store h [S, D] atomically (temporary file, then rename); no fsync: a lost entry is a miss."""
        if not self.writing:
            return
        buffer = io.BytesIO()
        # clone: a row of the batch would otherwise save the whole batch's storage; serialized first,
        # so an entry that would pass the bound is never written.
        torch.save({'hidden': hidden.detach().cpu().clone()}, buffer)
        data = buffer.getbuffer()
        if self.max_bytes is not None and self.size_bytes + len(data) > self.max_bytes:
            logger.warning("Feature cache %s reached its bound (%.3g GB, %d bytes held): no new entries are "
                           "added; existing ones are still read.", self.folder, self.max_bytes / 2 ** 30,
                           self.size_bytes)
            self.writing = False
            return
        path = self.path(key)
        previous = path.stat().st_size if self.max_bytes is not None and path.exists() else 0
        try:
            atomic_write(path, lambda file: file.write(data), fsync=False)
        except OSError as error:  # e.g. disk full: training goes on, without adding entries
            logger.warning("Cannot write to the feature cache %s (%s): no new entries are added.",
                           self.folder, error)
            self.writing = False
            return
        self.size_bytes += len(data) - previous  # a damaged entry rewritten replaces its bytes
        self.bytes_written += len(data)

    # ---- the base's forward, through the cache ------------------------------------------------
    def base_output(self, base: StreamingTransformer, x: torch.Tensor,
                    cross_attention_src: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """`base(x, cross_attention_src=...)` [B, S, D], read from the cache where stored.

        Missing examples are computed together, in one batch (all of `x` when nothing is
        stored, so a cold pass computes exactly what the base alone would), then stored.
        """
        keys = self.keys(x, cross_attention_src, base)
        rows: tp.List[tp.Optional[torch.Tensor]] = [self.read(key) for key in keys]
        missing = [index for index, row in enumerate(rows) if row is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            everything_missing = len(missing) == len(keys)
            if everything_missing:
                inputs, cross = x, cross_attention_src
            else:
                selected = torch.tensor(missing, device=x.device)
                inputs = x[selected]
                cross = None if cross_attention_src is None else cross_attention_src[selected]
            computed = base(inputs, cross_attention_src=cross)  # [len(missing), S, D]
            for index, row in zip(missing, computed):
                rows[index] = row
                self.write(keys[index], row)
            if everything_missing:
                return computed
        return torch.stack([row.to(x.device) for row in rows])  # type: ignore[union-attr]

    def take_counts(self) -> tp.Tuple[int, int]:
        """(hits, misses) since the last call, counted in examples."""
        counts = (self.hits, self.misses)
        self.hits = self.misses = 0
        return counts
