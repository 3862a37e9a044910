"""seqmix's vision backbones in timm's registry: ``import seqmix.timm_models``, then
``timm.create_model("biformer_tiny")`` (or ``"biformer_tiny_28"``, ``"seqmix_mambaout_femto"``,
``"seqmix_vit_28"``, ...) builds them.

Registration is an explicit import, never a side effect of ``import seqmix``: importing this
module imports the vision app (``seqmix.apps.vision``, which imports timm), and each backbone
file registers its variants as it is imported (``seqmix.apps.vision.common.timm_variant``).
Importing ``seqmix.apps.vision`` directly does the same.
"""

from seqmix.apps.vision import BiFormer, MambaOut, ViT

__all__ = ["BiFormer", "MambaOut", "ViT"]
