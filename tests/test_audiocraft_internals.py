"""The AudioCraft private members that `models/audiocraft_internals.py` uses are still where it
expects them. An AudioCraft upgrade that moves one fails here, naming it, instead of breaking a
training run halfway."""
import inspect

import torch

from audiocraft.models import musicgen
from audiocraft.models.lm import LMModel
from audiocraft.modules import conditioners, streaming
from audiocraft.solvers import base, musicgen as musicgen_solver
from audiocraft.utils import checkpoint

from audiocraft_ext.models import audiocraft_internals
from audiocraft_ext.models.tiny import build_tiny_musicgen


def _source(obj) -> str:
    return inspect.getsource(obj)


def test_streaming_flag_and_fsdp_slot():
    assert 'self._is_streaming = False' in _source(streaming.StreamingModule.__init__)
    model = build_tiny_musicgen('text')
    assert audiocraft_internals.is_streaming(model.lm) is False
    with model.lm.streaming():
        assert audiocraft_internals.is_streaming(model.lm) is True
    assert "self.__dict__['_fsdp'] = None" in _source(LMModel.__init__)
    assert 'self._fsdp' in _source(LMModel.compute_predictions)


def test_melody_conditioner_settings_are_those_of_musicgen_get_pretrained():
    loader = _source(musicgen.MusicGen.get_pretrained)
    assert "conditioners['self_wav'].match_len_on_eval = True" in loader
    assert "conditioners['self_wav']._use_masking = False" in loader
    assert 'self._use_masking' in _source(conditioners.ChromaStemConditioner)


def test_checkpoint_functions_the_solver_replaces():
    for name in ('_safe_save_checkpoint', 'load_checkpoint', 'resolve_checkpoint_path'):
        assert callable(getattr(checkpoint, name)), name
    assert '_safe_save_checkpoint(' in _source(checkpoint.save_checkpoint)
    loading = _source(base.StandardSolver.load_checkpoints)
    assert 'checkpoint.load_checkpoint(' in loading and 'checkpoint.resolve_checkpoint_path(' in loading
    assert 'checkpoint.save_checkpoint(' in _source(base.StandardSolver.save_checkpoints)
    originals = {name: getattr(checkpoint, name) for name in ('_safe_save_checkpoint', 'load_checkpoint',
                                                              'resolve_checkpoint_path')}
    with audiocraft_internals.checkpoint_io(save=print, load=len, resolve=repr):
        assert (checkpoint._safe_save_checkpoint, checkpoint.load_checkpoint,
                checkpoint.resolve_checkpoint_path) == (print, len, repr)
    assert {name: getattr(checkpoint, name) for name in originals} == originals


def test_solver_attributes_and_messages():
    init = _source(base.StandardSolver.__init__)
    assert 'self._ema_sources' in init and 'self._continue_best_source_keys' in init
    assert 'self._continue_best_source_keys' in _source(base.StandardSolver.load_checkpoints)
    assert 'get_ema(self._ema_sources' in _source(base.StandardSolver)
    assert audiocraft_internals.DIVERGED_MESSAGE in _source(musicgen_solver.MusicGenSolver.run_step)


def test_the_solver_logs_hashes_through_a_module_level_model_hash():
    """`hash_local_shards_in_solver_logs` replaces `audiocraft.solvers.base.model_hash`; the hash it
    puts there is AudioCraft's for plain tensors."""
    model = torch.nn.Linear(3, 2)
    original = base.model_hash
    assert 'model_hash(self.model)' in _source(base.StandardSolver)
    try:
        audiocraft_internals.hash_local_shards_in_solver_logs()
        assert base.model_hash is not original and base.model_hash(model) == original(model)
    finally:
        base.model_hash = original
