"""What a training run learned and forgot, read from its evaluate stage's report
(`<xp>/evaluation/metrics.json`): the tests' one way to bound both."""
import json
from pathlib import Path
import typing as tp


def gain_and_forgetting(xp_folder: tp.Union[str, Path]) -> tp.Tuple[float, float]:
    """(gain, forgetting) in nats per token: the new set's cross entropy, base - extended, and the
    reference set's (old data or the base's held-out generations), extended - base."""
    sets = json.loads((Path(xp_folder) / 'evaluation' / 'metrics.json').read_text())['sets']
    return (sets['new']['base']['ce'] - sets['new']['extended']['ce'],
            sets['reference']['extended']['ce'] - sets['reference']['base']['ce'])
