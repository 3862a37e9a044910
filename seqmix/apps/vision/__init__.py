"""The vision app: BiFormer, MambaOut and mixer-swappable ViT backbones on Fashion-MNIST.

Importing this package registers the backbones in timm's registry
(``timm.create_model("biformer_tiny")``, ``"seqmix_mambaout_femto"``, ``"seqmix_vit_28"``, ...).
"""

from seqmix.apps.vision import biformer, mambaout, vit  # noqa: F401  (registers the timm models)
from seqmix.apps.vision.biformer import BiFormer
from seqmix.apps.vision.mambaout import MambaOut
from seqmix.apps.vision.vit import ViT

__all__ = ["BiFormer", "MambaOut", "ViT"]
