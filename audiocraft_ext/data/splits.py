"""Dataset splits: how many items each split gets, and which items.

Both datasets the package writes use it: `prepare_data` deals a user's audio files out at random
(`deal`), the synthetic dataset renders as many clips per split as `split_sizes` says.
"""
import random
import typing as tp

SPLITS = ('train', 'valid', 'evaluate', 'generate')
# A split size is a fraction of the items (float) or an exact count (int).
SplitSize = tp.Union[int, float]
T = tp.TypeVar('T')


def split_sizes(num_items: tp.Optional[int],
                splits: tp.Union[tp.Mapping[str, SplitSize], tp.Iterable[tp.Tuple[str, SplitSize]]],
                rounding: tp.Callable[[float], int] = round) -> tp.Dict[str, int]:
    """Items per split; the first split takes what the others leave.

    Args:
        num_items: items over all splits, or None when every size is a count.
        splits: (name, size) pairs or a mapping, the first split first (its size only counts
            when `num_items` is None). A float is a fraction of `num_items`: `rounding` of
            `fraction * num_items`, at least 1 when the fraction is > 0; an int is a count.
        rounding: `round` (the synthetic dataset) or `math.floor` (`prepare_data`).
    Returns:
        {split: number of items}, in the order of `splits`.
    Raises:
        ValueError: a negative size, a fraction without `num_items`, or nothing left for the
            first split.
    """
    pairs = list(dict(splits).items())
    if not pairs:
        raise ValueError("No splits given.")
    sizes: tp.Dict[str, int] = {}
    for name, value in pairs[1:]:
        if isinstance(value, bool) or value < 0:
            raise ValueError(f"Split {name!r}: size must be a count or a fraction >= 0, got {value!r}.")
        if isinstance(value, int):
            sizes[name] = value
        else:
            if num_items is None:
                raise ValueError(f"Split {name!r} is a fraction ({value}) but num_items is None.")
            sizes[name] = max(1, int(rounding(value * num_items))) if value > 0 else 0
    first, value = pairs[0]
    if num_items is None:
        if not isinstance(value, int):
            raise ValueError(f"Split {first!r} is a fraction ({value}) but num_items is None.")
        sizes[first] = value
    else:
        sizes[first] = num_items - sum(sizes.values())
        if sizes[first] < 1:
            raise ValueError(f"The {first} split is empty: {num_items} items leave none after {sizes}.")
    return {name: sizes[name] for name, _ in pairs}


def deal(items: tp.Sequence[T], sizes: tp.Mapping[str, int], seed: int = 0) -> tp.Dict[str, tp.List[T]]:
    """Shuffle `items` (Python's `random`, seeded) and deal them out by `split_sizes`.

    Every split but the first takes its size from the front of the shuffled list, in order;
    the first split takes the rest.
    """
    items = list(items)
    random.Random(seed).shuffle(items)
    names = list(sizes)
    dealt: tp.Dict[str, tp.List[T]] = {}
    start = 0
    for name in names[1:]:
        dealt[name] = items[start:start + sizes[name]]
        start += sizes[name]
    dealt[names[0]] = items[start:]
    return dealt
