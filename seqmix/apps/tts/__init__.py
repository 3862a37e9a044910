"""Text to speech (issue 32): an espeak-ng corpus of ACL sentences (:mod:`.corpus`), mel spectrograms and
Griffin-Lim (:mod:`.audio`), a HiFi-GAN generator loading published weights (:mod:`.vocoder`), MCD-DTW
(:mod:`.metrics`) and the datamodule (:mod:`.data`)."""
