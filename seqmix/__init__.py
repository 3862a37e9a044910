"""seqmix: efficient token mixers behind one interface, and the applications that judge them."""

__version__ = "0.1.0"

from seqmix import timm_models as _timm_models  # noqa: E402

_timm_models.install()  # timm.create_model("biformer_tiny") works after `import seqmix` (timm imported or not yet)
