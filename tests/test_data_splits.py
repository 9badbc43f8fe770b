"""One split implementation (audiocraft_ext/data/splits.py) for both datasets: prepare-data rounds
fractions down, the synthetic dataset rounds them to the nearest count."""
import math

import pytest

from audiocraft_ext.data.prepare import DataPreparationError, split_files
from audiocraft_ext.data.splits import split_sizes

FRACTIONS = (('train', 1.0), ('valid', 0.15), ('evaluate', 0.15))


def test_fractions_round_down_for_prepare_data_and_to_nearest_for_the_synthetic_dataset():
    # 17 items x 0.15 = 2.55
    assert split_sizes(17, FRACTIONS, rounding=math.floor) == {'train': 13, 'valid': 2, 'evaluate': 2}
    assert split_sizes(17, FRACTIONS) == {'train': 11, 'valid': 3, 'evaluate': 3}
    # A fraction above 0 gets at least one item, 0 none; an int is a count.
    assert split_sizes(3, (('train', 1.0), ('valid', 0.01), ('evaluate', 0.0))) == \
        {'train': 2, 'valid': 1, 'evaluate': 0}
    assert split_sizes(10, (('train', 1.0), ('valid', 4))) == {'train': 6, 'valid': 4}
    with pytest.raises(ValueError, match='train split is empty'):
        split_sizes(2, FRACTIONS)


def test_prepare_data_split_is_a_seeded_partition_with_generate_equal_to_evaluate():
    files = [f'file_{i:02d}.wav' for i in range(17)]
    splits = split_files(files, valid=0.15, evaluate=0.15, seed=0)
    assert {name: len(items) for name, items in splits.items()} == \
        {'train': 13, 'valid': 2, 'evaluate': 2, 'generate': 2}
    assert sorted(splits['train'] + splits['valid'] + splits['evaluate']) == files
    assert splits['generate'] == splits['evaluate']
    assert split_files(files, 0.15, 0.15, seed=0) == splits
    assert split_files(files, 0.15, 0.15, seed=1) != splits
    with pytest.raises(DataPreparationError, match='The train split is empty'):
        split_files(files[:2], valid=0.1, evaluate=0.1)
    with pytest.raises(DataPreparationError, match='The valid split is empty'):
        split_files(files, valid=0.0, evaluate=0.1)
