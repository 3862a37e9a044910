"""seqmix: efficient token mixers behind one interface, and the applications that judge them.

``import seqmix`` has no side effect: it imports neither timm nor Lightning and registers nothing.
``import seqmix.timm_models`` (or the vision app, ``seqmix.apps.vision``) puts the vision backbones
in timm's registry, so that ``timm.create_model("biformer_tiny")`` works.
"""

__version__ = "0.1.0"
