"""seqmix: efficient token mixers behind one interface, and the applications that judge them."""

__version__ = "0.1.0"
