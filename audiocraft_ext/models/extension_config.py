"""`ExtensionConfig`: what builds an extension's new layers on a base, checked once, here.

Every part of the library that names the new layers goes through it: `ExtendedLMModel` (built
from one, and its `extension_scale` changes through one), the solver (`extended_model.*`), the
extension files and training checkpoints (`to_dict` / `from_dict`: the JSON `extension` entry,
unchanged since format version 1), `ExtendedMusicGen.attach` and `generate --scale`. Free of
torch, so a command line checks its arguments before loading anything.
"""
from dataclasses import dataclass, field, replace
import math
import typing as tp

MAX_EXTENSION_SCALE = 10.0  # past it the new layers' branches swamp the base's: logits overflow in generation


@dataclass(frozen=True)
class ExtensionConfig:
    """The new layers of an extension.

    Attributes:
        num_additional_layers (int): N, a positive int.
        extension_scale (float): strength of the new layers' residual branches, from 0 (the base
            exactly) to `MAX_EXTENSION_SCALE`; 1 is the extension as trained.
        layer_config (dict): `StreamingTransformer` arguments of the new layers. As a request
            (`ExtendedLMModel(..., **layer_overrides)`, `extended_model.layer_overrides`) only those
            that differ from the base's layers; once built (`ExtendedLMModel.extension_config`) all
            of them, resolved against the base (`layers.resolve_layer_config`).
    """
    num_additional_layers: int = 12
    extension_scale: float = 1.0
    layer_config: tp.Mapping[str, tp.Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        value = self.num_additional_layers
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"num_additional_layers={value!r}: use a positive integer (the number of new "
                             "layers, e.g. num_additional_layers=12).")
        scale = self.extension_scale
        try:
            number = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"extension_scale must be a number, got {scale!r}.") from None
        if isinstance(scale, bool) or not math.isfinite(number) or not 0 <= number <= MAX_EXTENSION_SCALE:
            raise ValueError(f"extension_scale={scale!r} is out of range: use a value from 0 to "
                             f"{MAX_EXTENSION_SCALE:g} (0.0 gives the base model, 1.0 the extension as trained).")
        if not isinstance(self.layer_config, tp.Mapping) or not all(isinstance(k, str) for k in self.layer_config):
            raise TypeError(f"layer_config must map StreamingTransformer argument names to values, got "
                            f"{self.layer_config!r}.")
        object.__setattr__(self, 'extension_scale', number)
        object.__setattr__(self, 'layer_config', dict(self.layer_config))

    def with_scale(self, extension_scale: tp.Any) -> 'ExtensionConfig':
        """The same layers at another `extension_scale` (checked)."""
        return replace(self, extension_scale=extension_scale)

    def to_dict(self) -> tp.Dict[str, tp.Any]:
        """The JSON form stored in extension files and checkpoints."""
        return {'num_additional_layers': self.num_additional_layers, 'layer_config': dict(self.layer_config),
                'extension_scale': self.extension_scale}

    @classmethod
    def from_dict(cls, data: tp.Mapping[str, tp.Any]) -> 'ExtensionConfig':
        """Read `to_dict`'s form (`extension_scale` defaults to 1); KeyError/TypeError/ValueError if invalid."""
        if not isinstance(data, tp.Mapping):
            raise TypeError(f"an extension config is a JSON object, got {type(data).__name__}")
        return cls(data['num_additional_layers'], data.get('extension_scale', 1.0), data['layer_config'])


def checked(prefix: str, build: tp.Callable[[], 'ExtensionConfig']) -> 'ExtensionConfig':
    """`build()`, its errors naming the keys as the caller spells them (`prefix` + key, e.g.
    'extended_model.' in a solver config, '--' on a command line)."""
    try:
        return build()
    except (TypeError, ValueError) as error:
        message = str(error)
        for key in ('num_additional_layers', 'extension_scale', 'layer_config'):
            if message.startswith(key):
                raise type(error)(prefix + message) from None
        raise
