"""Networks: the fusion network F and the loss generation module G, built by name; F runs band
by band, exactly, in :mod:`.banded` (band heights and memory: :mod:`.band_plan`)."""
from .blocks import ChannelLayerNorm, GatedFeedForward, RestormerBlock, TransposedAttention
from .fusion import AdaptiveFusion, FusionNet
from .lossgen import LossGenerator
from .registry import create_model, list_models, register_model

__all__ = [
    "AdaptiveFusion", "ChannelLayerNorm", "FusionNet", "GatedFeedForward", "LossGenerator",
    "RestormerBlock", "TransposedAttention", "create_model", "list_models", "register_model",
]
