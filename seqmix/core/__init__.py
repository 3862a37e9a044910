"""The shared core: the Mixer contract and registry, blocks, embeddings, the generation loop
(:mod:`seqmix.core.decoding`)."""

from seqmix.core.mixer import (
    PATTERNS,
    ContextCache,
    KVCache,
    Mixer,
    build_mixer,
    get_mixer_class,
    list_mixers,
    mixer_arguments,
    register_mixer,
)

__all__ = [
    "PATTERNS",
    "ContextCache",
    "KVCache",
    "Mixer",
    "build_mixer",
    "get_mixer_class",
    "list_mixers",
    "mixer_arguments",
    "register_mixer",
]
