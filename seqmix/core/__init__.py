"""The shared core: the Mixer contract and registry, blocks, embeddings."""

from seqmix.core.mixer import (
    PATTERNS,
    Mixer,
    build_mixer,
    get_mixer_class,
    list_mixers,
    mixer_arguments,
    register_mixer,
)

__all__ = [
    "PATTERNS",
    "Mixer",
    "build_mixer",
    "get_mixer_class",
    "list_mixers",
    "mixer_arguments",
    "register_mixer",
]
