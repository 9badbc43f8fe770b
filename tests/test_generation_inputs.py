"""Generation refuses bad input early and clearly, and is safe to call from two threads."""
import re
import threading

import pytest
import torch

from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.models.tiny import build_tiny_musicgen


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    model = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), num_additional_layers=1)
    for parameter in model.lm.extension.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    model.set_generation_params(duration=0.4, use_sampling=False)
    return model


def test_two_threads_generate_the_same_as_one_after_the_other(model):
    reference = model.generate(['calm piano', 'fast drums'])
    results = {}

    def generate(index):
        results[index] = model.generate(['calm piano', 'fast drums'])

    threads = [threading.Thread(target=generate, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[index], reference) for index in range(2))


BAD_CALLS = {
    'empty descriptions': (lambda m: m.generate([]), ValueError, 'descriptions is empty'),
    'descriptions not a list': (lambda m: m.generate('calm piano'), TypeError, 'wrap a single prompt'),
    'description not a string': (lambda m: m.generate([3]), TypeError, 'descriptions[0]'),
    'duration zero': (lambda m: m.set_generation_params(duration=0), ValueError, 'duration=0'),
    'duration negative': (lambda m: m.set_generation_params(duration=-2.0), ValueError, 'positive'),
    'extend_stride past max_duration': (lambda m: m.set_generation_params(duration=1, extend_stride=40),
                                        ValueError, 'shorter than'),
    'NaN in prompt': (lambda m: m.generate_continuation(torch.full((1, 1, 800), float('nan')), 16000),
                      ValueError, 'NaN'),
    'prompt longer than duration': (lambda m: m.generate_continuation(torch.zeros(1, 1, 16000), 16000),
                                    ValueError, 'longer than'),
    'prompt of wrong shape': (lambda m: m.generate_continuation(torch.zeros(800), 16000), ValueError, 'shape'),
    'prompt not a tensor': (lambda m: m.generate_continuation([0.0] * 800, 16000), TypeError, 'torch.Tensor'),
    'prompt sample rate zero': (lambda m: m.generate_continuation(torch.zeros(1, 1, 800), 0), ValueError,
                                'sample rate'),
    'descriptions do not match prompts': (lambda m: m.generate_continuation(torch.zeros(2, 1, 800), 16000, ['a']),
                                          ValueError, 'one per prompt'),
    'melody on a text-only base': (lambda m: m.generate_with_chroma(['a'], torch.zeros(1, 1, 800), 16000),
                                   RuntimeError, 'melody'),
    'melody count differs': (lambda m: m.generate_with_chroma(['a', 'b'], torch.zeros(1, 1, 800), 16000),
                             ValueError, 'one per description'),
    'no extension to load': (lambda m: ExtendedMusicGen.get_pretrained(None), TypeError,
                             'get_pretrained needs the extension to load'),
    'extension_scale far past the bound': (lambda m: m.set_generation_params(extension_scale=1e30), ValueError,
                                           'use a value from 0 to 10'),
    'top_k above the codebook size': (lambda m: m.set_generation_params(top_k=10 ** 6), ValueError,
                                      'top_k=1000000 is out of range: use an integer from 0 (off) to the codebook '
                                      'size, 256'),
    'temperature not a number': (lambda m: m.set_generation_params(temperature='hot'), TypeError,
                                 "temperature='hot': use a number above 0"),
    'cfg_coef NaN': (lambda m: m.set_generation_params(cfg_coef=float('nan')), ValueError,
                     'cfg_coef=nan: use a finite number'),
    'top_p positional above 1': (lambda m: m.set_generation_params(True, 250, 2.0), ValueError,
                                 'top_p=2.0: use a probability'),
    'zero prompts': (lambda m: m.generate_continuation(torch.zeros(0, 1, 800), 16000), ValueError, 'B > 0 items'),
    'int16 prompt': (lambda m: m.generate_continuation(torch.zeros(1, 1, 800, dtype=torch.int16), 16000),
                     TypeError, 'wav.float() / 32768'),
    'prompt shorter than a frame': (lambda m: m.generate_continuation(torch.zeros(1, 1, 10), 1_000_000),
                                    ValueError, 'shorter than one frame of the model\'s codec'),
}


@pytest.mark.parametrize('case', sorted(BAD_CALLS))
def test_bad_generation_input_gets_a_clear_error(model, case):
    call, error, message = BAD_CALLS[case]
    params = dict(model.generation_params)
    with pytest.raises(error, match=re.escape(message)):
        call(model)
    assert model.generation_params == params and model.extension_scale == 1.0  # nothing half-applied
