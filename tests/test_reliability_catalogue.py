"""The bad-input catalogue of docs/ERRORS.md: every row not tested elsewhere, one case each.

Each case gives the error type and the start (or a distinctive part) of its message; the rows
tested elsewhere name their tests in docs/ERRORS.md. Solver cases build the solver in-process
(as `python -m audiocraft_ext.train ARGS` does) on the exported tiny text base.
"""
import json
import math
from pathlib import Path
import re
import typing as tp

import pytest
import torch

from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.data.prepare import prepare_data
from audiocraft_ext.data.synth_dataset import write_tone_folder
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.models.tiny import build_tiny_musicgen
from audiocraft_ext.data.checks import DataCheckError

pytestmark = pytest.mark.usefixtures('dora_dir')  # every run here writes to a temporary Dora folder


def make_egs(root: Path) -> Path:
    write_tone_folder(root / 'audio', num_files=4, duration=1.0)
    prepare_data(root / 'audio', root / 'egs', captions=root / 'audio' / 'captions.csv')
    return root / 'egs'


@pytest.fixture(scope='module')
def good_egs(tmp_path_factory) -> Path:
    return make_egs(tmp_path_factory.mktemp('good'))


@pytest.fixture(scope='module')
def solver(build_solver):
    """`solver(base, egs, *extra, restore=False)`: the debug config's solver on `base` and `egs`."""
    def build(base: tp.Any, egs: Path, *extra: str, restore: bool = False):
        args = ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}', *extra]
        return build_solver(args, restore=restore)[1]
    return build


def first_train_file(egs: Path) -> Path:
    return Path(json.loads((egs / 'train' / 'data.jsonl').read_text().splitlines()[0])['path'])


def break_data(how: str) -> tp.Callable[[Path], None]:
    def apply(egs: Path) -> None:
        audio = first_train_file(egs)
        if how == 'missing audio':
            audio.unlink()
        elif how == 'empty audio':
            audio.write_bytes(b'')
        elif how == 'corrupt audio':
            audio.write_bytes(b'this is not a wav file at all' * 10)
        elif how == 'missing sidecar':
            audio.with_suffix('.json').unlink()
        elif how == 'sidecar without description':
            sidecar = audio.with_suffix('.json')
            sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), 'description': ''}))
        elif how == 'sidecar not json':
            audio.with_suffix('.json').write_text('{"description": "a tone"')
        elif how == 'empty manifest':
            (egs / 'train' / 'data.jsonl').write_text('')
        elif how == 'missing manifest':
            (egs / 'valid' / 'data.jsonl').unlink()
    return apply


# name -> (what to break in a fresh dataset, error type, message pattern)
DATA_CASES = {
    'manifest names a missing audio file': ('missing audio', DataCheckError,
                                            r'1 audio file\(s\) named in the manifests cannot be read:\n  .*tone_\d+\.wav \(train\) does not exist'),
    'manifest names an empty audio file': ('empty audio', DataCheckError, r'\(train\) is empty \(0 bytes\)'),
    'manifest names a corrupt audio file': ('corrupt audio', DataCheckError, r'\(train\) is not readable audio'),
    'caption sidecar missing': ('missing sidecar', DataCheckError,
                                r'1 audio file\(s\) have no caption:\n  .*has no caption file tone_\d+\.json'),
    'caption sidecar without description': ('sidecar without description', DataCheckError,
                                            r'has no description in tone_\d+\.json'),
    'caption sidecar not valid JSON': ('sidecar not json', DataCheckError, r'has an unreadable caption file'),
    'empty manifest': ('empty manifest', DataCheckError, r'datasource\.train: the manifest .* lists no audio file'),
    'split manifest missing': ('missing manifest', DataCheckError, r'datasource\.valid=.*: no manifest at'),
}


@pytest.mark.parametrize('case', sorted(DATA_CASES))
def test_bad_training_data_stops_before_training_naming_the_file(case, exported_bases, tmp_path, solver):
    how, error, pattern = DATA_CASES[case]
    egs = make_egs(tmp_path)
    break_data(how)(egs)
    with pytest.raises(error, match=pattern) as info:
        solver(exported_bases['text'], egs)
    assert 'audiocraft-ext prepare-data' in str(info.value) or 'egs_root' in str(info.value)


def test_egs_root_that_does_not_exist(exported_bases, tmp_path, solver):
    with pytest.raises(DataCheckError, match=r'datasource\.\w+=.*no manifest at .*set egs_root to a folder'):
        solver(exported_bases['text'], tmp_path / 'nowhere')


def test_data_checks_can_be_turned_off_for_captions(exported_bases, tmp_path, build_solver):
    """data_checks.captions=false: the file without a caption is trained on, with no description (the
    others with theirs), instead of stopping the run."""
    egs = make_egs(tmp_path)
    break_data('missing sidecar')(egs)
    uncaptioned = str(first_train_file(egs))
    xp, solver = build_solver(['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={exported_bases["text"]}',
                               f'egs_root={egs}', 'data_checks.captions=false', 'optim.epochs=1',
                               'optim.updates_per_epoch=4', 'replay.ratio=0'])
    solver.should_run_stage = lambda stage: False  # no evaluate / generate: the training is what is tested
    seen: tp.List[tp.Tuple[str, tp.Any]] = []
    prepare = solver._prepare_tokens_and_attributes

    def recording(batch, *args, **kwargs):
        if solver.is_training:
            seen.extend((info.meta.path, info.description) for info in batch[1])
        return prepare(batch, *args, **kwargs)
    solver._prepare_tokens_and_attributes = recording
    with xp.enter():
        solver.run()
    assert len(seen) == 4 * solver.cfg.dataset.batch_size
    assert {description for path, description in seen if path == uncaptioned} == {None}
    assert all(description for path, description in seen if path != uncaptioned)
    assert len(solver.history) == 1 and math.isfinite(solver.history[0]['train']['ce'])


# name -> (overrides, error type, message start)
CONFIG_CASES = {
    'extension_scale=-1 from the config': (['extended_model.extension_scale=-1'], ValueError,
                                           'extended_model.extension_scale=-1 is out of range'),
    'extension_scale=nan from the config': (['extended_model.extension_scale=nan'], ValueError,
                                            'extended_model.extension_scale=nan is out of range'),
    'num_additional_layers=0 from the config': (['extended_model.num_additional_layers=0'], ValueError,
                                                'extended_model.num_additional_layers=0: use a positive integer'),
    'num_additional_layers=-2 from the config': (['extended_model.num_additional_layers=-2'], ValueError,
                                                 'extended_model.num_additional_layers=-2: use a positive integer'),
    'num_additional_layers=1.5 from the config': (['extended_model.num_additional_layers=1.5'], ValueError,
                                                  'extended_model.num_additional_layers=1.5'),
    'layer override num_heads does not divide d_model': (['+extended_model.layer_overrides.num_heads=3'], ValueError,
                                                         "extended_model.layer_overrides={'num_heads': 3} do not fit"),
    'layer override changes d_model': (['+extended_model.layer_overrides.d_model=48'], ValueError,
                                       "extended_model.layer_overrides={'d_model': 48} do not fit"),
    'unknown layer override': (['+extended_model.layer_overrides.heads=4'], ValueError,
                               "extended_model.layer_overrides={'heads': 4} do not fit"),
    'base_dtype bfloat16': (['extended_model.base_dtype=bfloat16'], ValueError,
                            "extended_model.base_dtype=bfloat16: Cannot store the frozen base in 'bfloat16'"),
    'channels differ from the base': (['channels=2'], ValueError, 'channels=2 but the base'),
    'base path that does not exist': (['pretrained_model_checkpoint=/nonexistent/base'], FileNotFoundError,
                                      'Base model not found: /nonexistent/base'),
    'base //sig/ of no experiment': (['pretrained_model_checkpoint=//sig/deadbeef'], FileNotFoundError,
                                     "//sig/deadbeef: no run 'deadbeef' in"),
    'generate prompt too short for loudness': (['generate.audio.strategy=loudness', 'generate.lm.prompted_samples=true'],
                                               ValueError,
                                               'generate.lm.prompt_duration is 0.25 s'),
}


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_bad_training_config_gets_a_clear_error(case, exported_bases, good_egs, solver):
    overrides, error, message = CONFIG_CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        solver(exported_bases['text'], good_egs, *overrides)


def test_continue_from_a_pretrained_musicgen(exported_bases, good_egs, solver):
    with pytest.raises(ValueError, match=re.escape('continue_from=//pretrained/... loads a full MusicGen')):
        solver(exported_bases['text'], good_egs, 'continue_from=//pretrained/facebook/musicgen-small', restore=True)


def test_non_solver_file_as_a_solver_checkpoint(tmp_path):
    torch.save({'model': {}}, tmp_path / 'checkpoint.th')
    with pytest.raises(CheckpointError, match='is not a checkpoint of ExtendedMusicGenSolver'):
        ExtendedMusicGen.from_solver_checkpoint(tmp_path / 'checkpoint.th', device='cpu')


@pytest.fixture(scope='module')
def model():
    model = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), num_additional_layers=1)
    model.set_generation_params(duration=0.4, use_sampling=False)
    return model


GENERATION_CASES = {
    'num_samples=0 for unconditional generation': (lambda m: m.generate_unconditional(0), ValueError,
                                                    'num_samples=0: give a positive number'),
    'melody of wrong shape': (lambda m: m.generate_with_chroma(['a'], torch.zeros(800), 16000), ValueError,
                              'melody_wavs[0] has shape [800]; expected [B, C, T] or [C, T]'),
    'NaN in a melody': (lambda m: m.generate_with_chroma(['a'], torch.full((1, 1, 800), float('nan')), 16000),
                        ValueError, 'melody_wavs[0] contains NaN or infinite samples'),
    'continuation prompt with 4 dimensions': (lambda m: m.generate_continuation(torch.zeros(1, 1, 1, 800), 16000),
                                              ValueError, 'prompt has shape [1, 1, 1, 800]'),
    'continuation prompt with 3 channels': (lambda m: m.generate_continuation(torch.zeros(1, 3, 800), 16000),
                                            ValueError, 'prompt has shape [1, 3, 800]'),
    'infinite extension_scale': (lambda m: m.set_generation_params(extension_scale=float('inf')), ValueError,
                                 'extension_scale=inf is out of range'),
}


@pytest.mark.parametrize('case', sorted(GENERATION_CASES))
def test_bad_generation_input_gets_a_clear_error(case, model):
    call, error, message = GENERATION_CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        call(model)
