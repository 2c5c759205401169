"""The import path callers used before layouts: the decoder stack, its layers and the text config.

Everything here is defined in :mod:`companion.model.layouts`; :func:`family_of` gives the
:class:`~companion.model.layouts.Blocks` of the first decoder layer (module names of its attention,
MLP and their norms).
"""

from __future__ import annotations

from torch import nn

from companion.model.layouts import (
    Blocks,
    decoder,
    decoder_layers,
    layer_blocks,
    text_config,
)

__all__ = ["Blocks", "decoder", "decoder_layers", "family_of", "layer_blocks", "text_config"]


def family_of(model: nn.Module) -> Blocks:
    """The blocks of the first decoder layer, or a one-line error naming why the model is refused."""
    return layer_blocks(model)[0]
