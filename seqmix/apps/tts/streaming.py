"""Streaming speech (issue 32): waveform chunks while the decoder is still generating, batch 1.

Implemented::

    decoder steps              TTSNetwork.infer_steps: r normalised frames a step (the loop infer uses)
      -> post-net chunks       mel + Postnet(mel) in windows: EXACT (the whole-utterance post-net mel)
      -> vocoder chunks        HiFi-GAN in windows: EXACT (float rounding); Griffin-Lim per window with
                               overlap and a cross-fade: an APPROXIMATION of whole-utterance Griffin-Lim
      -> waveform chunks       22,050 Hz float, 256 samples a frame, concatenated = the utterance

Both windowed stages are a :class:`ContextChunker`: it keeps the frames it has been given, and emits chunk
``[e, e + n)`` (``n = chunk_frames``) once ``right`` frames after it exist (or the utterance ended), computed
from the window ``[e - left, e + n + right)`` clipped to the utterance, then forgets every frame before
``e + n - left``. So it holds at most ``left + n + right + (frames of one push)`` frames, whatever the length.
The post-net's first chunk is longer by the vocoder's right context ``V``: the vocoder's first chunk needs
``n + V`` mel frames, so the first audio is out once the decoder has made ``n + V + H`` frames (``H`` the
post-net's context; rounded up to whole decoder steps), and every later chunk ``n`` frames after the last.

- **Post-net** (:func:`postnet_context`): 5 convolutions (kernel 5) with batch norm in eval mode are a local
  operator; output frame ``t`` depends on input frames ``t - H .. t + H``, ``H`` the sum of the convolutions'
  half-widths ``dilation * (kernel - 1) / 2`` (10 for Tacotron 2's post-net), read from the
  :class:`~.network.Postnet`'s own convolutions. Every convolution pads with zeros, at the utterance's ends as
  at a window's; a window with ``H`` frames of context on each side (or the utterance's end) gives its centre
  exactly: the streamed post-net mel equals :meth:`~.network.TTSNetwork.infer`'s (tested to 1e-5).
- **HiFi-GAN** (:func:`hifigan_context`): the generator is convolutional too (transposed convolutions, residual
  blocks, all zero-padded); its receptive field, bounded from its layers' kernels, dilations and strides, is
  16 mel frames each side for V1. A chunk is vocoded with that many frames of mel context on each side and
  its ``256 * n`` samples cut out: equal to whole-utterance vocoding to float rounding (tested on a small
  randomly initialised generator: max |difference| < 1e-5). It costs ``(n + 32) / n`` times the whole-utterance
  compute (2x at n = 32).
- **Griffin-Lim** (:class:`GriffinLimChunks`) estimates phase iteratively over the whole spectrogram, so it
  cannot be windowed exactly; it is an **approximation**. Each chunk runs :func:`~.audio.griffin_lim` (the same
  60 iterations) on its window with :data:`GRIFFIN_LIM_CONTEXT` frames of mel context on each side; the
  window's left-context samples, already emitted, are passed as ``known`` (held fixed while iterating, so the
  new phases continue the audio already played: RTISI-LA's idea, Zhu et al. 2007), and the chunk's first
  :data:`CROSSFADE` samples are cross-faded (raised cosine) with the previous window's audio past its chunk.
  Its quality is measured by spectral convergence (:func:`~.audio.spectral_convergence`: the relative
  Frobenius distance of the audio's mel magnitude from the target's): the test holds streamed Griffin-Lim
  (chunks of 7 frames) within :data:`GRIFFIN_LIM_SC_MARGIN` of whole-utterance Griffin-Lim on an espeak-ng
  sentence, and checks that independently vocoded 8-frame pieces fall outside that margin. Smaller chunks
  drift further (1-frame chunks may exceed it); each window costs ``(n + 16) / n`` times its share of
  whole-utterance Griffin-Lim.

Memory: the streamer holds the two chunkers' windows (bounded, :attr:`SpeechStreamer.buffered_frames`) and
the decoder's state. With a recurrent decoder mixer (``configs/tts/transformer_tts_lstm.yaml``,
``_gla``: constant-size ``step`` state) and the Tacotron baseline the whole stream is constant-size; a
softmax decoder streams too, but its KV cache grows with every step (and the cross attention keeps the
encoder's keys and values, a fixed size per sentence). Randomness: the pre-net's inference dropout draws in
the same order as :meth:`~.network.TTSNetwork.infer` (the vocoders draw from their own generators), so the
same seed gives the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from seqmix.apps.tts.audio import GRIFFIN_LIM_ITERS, GRIFFIN_LIM_MIN_FRAMES, HOP, griffin_lim
from seqmix.apps.tts.network import Postnet, TTSNetwork
from seqmix.apps.tts.vocoder import HiFiGANGenerator, load_hifigan
from seqmix.core.mixer import check_int

CHUNK_FRAMES = 32  # 0.37 s of audio a chunk
GRIFFIN_LIM_CONTEXT = 8  # mel frames of context on each side of a Griffin-Lim window
CROSSFADE = HOP // 4  # samples cross-faded between neighbouring Griffin-Lim windows (2.9 ms)
GRIFFIN_LIM_SC_MARGIN = 0.02  # the tested bound: streamed spectral convergence <= whole-utterance's + this
VOCODERS = ("griffin-lim", "hifigan")  # the vocoder names, here and for `seqmix tts predict --vocoder`


# ---------------------------------------------------------------------------------------------- receptive fields
def conv_half_width(conv: nn.Conv1d) -> int:
    """Input positions on each side that one output position of a stride-1, length-preserving ``conv`` reads."""
    reach = conv.dilation[0] * (conv.kernel_size[0] - 1)
    if conv.stride[0] != 1 or reach % 2 or conv.padding != (reach // 2,):
        raise ValueError(f"{conv} is not a centred, length-preserving convolution (stride 1, padding "
                         "dilation * (kernel - 1) / 2); it cannot be applied in windows")
    return reach // 2


def postnet_context(postnet: Postnet) -> int:
    """Frames on each side that one post-net output frame depends on: the sum of its convolutions' half-widths."""
    return sum(conv_half_width(conv) for conv in postnet.convs)


def hifigan_context(generator: HiFiGANGenerator) -> int:
    """Mel frames on each side that one output sample of ``generator`` depends on (an upper bound), walked back
    from the output: ``conv_post``; per upsampling stage the widest residual block (the MRF's blocks run side
    by side), then the transposed convolution (kernel ``K``, stride ``s``: ``R`` samples after it are at most
    ``ceil((R + K) / s) + 1`` before it); ``conv_pre``."""
    reach = conv_half_width(generator.conv_post)  # samples at the output rate
    for i in reversed(range(len(generator.ups))):
        blocks = generator.resblocks[i * generator.n_kernels:(i + 1) * generator.n_kernels]
        reach += max(sum(conv_half_width(c) for c in [*block.convs1, *block.convs2]) for block in blocks)
        up = generator.ups[i]
        reach = math.ceil((reach + up.kernel_size[0]) / up.stride[0]) + 1
    return reach + conv_half_width(generator.conv_pre)


# ---------------------------------------------------------------------------------------------- windows
class ContextChunker:
    """A local operator applied to a growing sequence of frames ``[n, C]`` in chunks (module docstring).

    ``apply(window [w, C], lead, count)`` returns the output of the window's frames ``lead .. lead + count``;
    it is called with ``left`` frames before them and ``right`` after (fewer only at the utterance's ends).
    Chunks have ``chunk_frames`` frames, the first ``first_frames`` (default the same; the post-net's first
    chunk also covers the vocoder's right context, so the vocoder's first chunk is ready with it).
    :meth:`push` returns the chunks the new frames complete, :meth:`finish` the rest (the last one shorter)."""

    def __init__(self, chunk_frames: int, left: int, right: int, apply: Callable[[Tensor, int, int], Tensor], *,
                 first_frames: int | None = None):
        self.chunk = check_int("ContextChunker", "chunk_frames", chunk_frames, meaning="frames per chunk")
        self.first = self.chunk if first_frames is None else check_int("ContextChunker", "first_frames",
                                                                       first_frames)
        self.left = check_int("ContextChunker", "left", left, minimum=0)
        self.right = check_int("ContextChunker", "right", right, minimum=0)
        self.apply = apply
        self.buffer: Tensor | None = None  # [held, C]: frames start .. start + held
        self.start = 0  # the utterance's index of buffer[0]
        self.done = 0  # frames emitted

    @property
    def held(self) -> int:
        return 0 if self.buffer is None else self.buffer.shape[0]

    def push(self, frames: Tensor) -> list[Tensor]:
        """Append ``frames [n, C]``; the chunks whose right context now exists."""
        self.buffer = frames if self.buffer is None else torch.cat([self.buffer, frames])  # [held + n, C]
        out = []
        while self.start + self.held - self.done >= self.next_count + self.right:
            out.append(self._emit(self.next_count))
        return out

    @property
    def next_count(self) -> int:
        """Frames in the next whole chunk."""
        return self.first if self.done == 0 else self.chunk

    def finish(self) -> list[Tensor]:
        """The utterance ended: every frame not yet emitted, in chunks (its right context is the end)."""
        out = []
        while self.done < self.start + self.held:
            out.append(self._emit(min(self.next_count, self.start + self.held - self.done)))
        return out

    def _emit(self, count: int) -> Tensor:
        lo = max(self.done - self.left, self.start)  # window start, in the utterance
        hi = min(self.done + count + self.right, self.start + self.held)
        chunk = self.apply(self.buffer[lo - self.start: hi - self.start], self.done - lo, count)
        self.done += count
        keep = max(self.done - self.left, self.start)  # the next window's start
        self.buffer = self.buffer[keep - self.start:]  # [held - dropped, C]
        self.start = keep
        return chunk


class GriffinLimChunks:
    """The ``apply`` of a :class:`ContextChunker` vocoding log-mel windows ``[w, 80]`` with Griffin-Lim, an
    approximation (module docstring): the window's left-context samples already emitted are ``known`` to
    :func:`~.audio.griffin_lim`, the chunk's ``256 * count`` samples are cut out, and its first ``crossfade``
    samples are faded in over the previous window's audio past the previous chunk."""

    def __init__(self, context: int = GRIFFIN_LIM_CONTEXT, crossfade: int = CROSSFADE,
                 n_iter: int = GRIFFIN_LIM_ITERS):
        owner = "GriffinLimChunks"
        self.context = check_int(owner, "context", context, minimum=GRIFFIN_LIM_MIN_FRAMES - 1,
                                 meaning="mel frames on each side; a window needs Griffin-Lim's minimum")
        self.crossfade = check_int(owner, "crossfade", crossfade, minimum=0, meaning="samples")
        self.n_iter = check_int(owner, "n_iter", n_iter, meaning="Griffin-Lim iterations per window")
        if crossfade > context * HOP:
            raise ValueError(f"{owner}: crossfade={crossfade} samples needs at least that much right context; "
                             f"give context >= {math.ceil(crossfade / HOP)} frames or a shorter crossfade")
        self.emitted = torch.zeros(0)  # [<= 256 * context] the last samples emitted (the next window's known part)
        self.tail = torch.zeros(0)  # [<= crossfade] the previous window's samples past its chunk

    def __call__(self, window: Tensor, lead: int, count: int) -> Tensor:
        known = self.emitted[self.emitted.shape[0] - lead * HOP:] if lead else None  # [lead * 256]
        audio = griffin_lim(window.T, self.n_iter, known=known)  # [80, w] -> [w * 256]
        chunk = audio[lead * HOP:(lead + count) * HOP].clone()  # [count * 256]
        n = min(self.tail.shape[0], chunk.shape[0])
        fade_in = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, n + 2)[1:-1])  # raised cosine in (0, 1)
        chunk[:n] = fade_in * chunk[:n] + (1 - fade_in) * self.tail[:n]
        self.tail = audio[(lead + count) * HOP:(lead + count) * HOP + self.crossfade]
        emitted = torch.cat([self.emitted, chunk])  # [emitted + 256 count]
        self.emitted = emitted[max(0, emitted.shape[0] - self.context * HOP):]  # its last 256 * context
        return chunk


# ---------------------------------------------------------------------------------------------- the stream
def network_of(model_or_network: nn.Module) -> TTSNetwork:
    """The :class:`TTSNetwork` of a network or of a module holding one (``TTSModule.network``), in eval mode."""
    network = model_or_network if isinstance(model_or_network, TTSNetwork) else getattr(model_or_network,
                                                                                        "network", None)
    if not isinstance(network, TTSNetwork):
        raise ValueError(f"stream_speech needs a TTSNetwork or a TTSModule, got {type(model_or_network).__name__}")
    if network.training:
        raise ValueError("stream_speech needs the network in eval mode (the post-net's batch norm must use its "
                         "running statistics to be windowed); call .eval() first")
    return network


def check_ids(ids: Sequence[int] | Tensor) -> Tensor:
    """One sentence's phoneme ids as int64 ``[L]``; a ValueError for a batch or an empty sentence."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"stream_speech takes one sentence's phoneme ids [L] (batch 1), got shape "
                         f"{tuple(ids.shape)}; stream sentences one at a time")
    return ids


class SpeechStreamer:
    """Phoneme ids -> waveform chunks (module docstring), batch 1.

    Args:
        model_or_network: a :class:`TTSNetwork` or a ``TTSModule``, in eval mode.
        chunk_frames: mel frames per chunk (256 samples each; default 32 = 0.37 s).
        vocoder: ``"griffin-lim"``, ``"hifigan"`` (the published universal generator) or a
            :class:`HiFiGANGenerator`.
        max_frames, stop_threshold: as :meth:`TTSNetwork.infer`.

    After a stream ends, :attr:`frames` is the utterance's length and :attr:`stopped` whether its stop token
    fired (False: cut at ``max_frames``); :attr:`buffered_frames` is what the chunkers hold at any time."""

    def __init__(self, model_or_network: nn.Module, *, chunk_frames: int = CHUNK_FRAMES,
                 vocoder: str | HiFiGANGenerator = "griffin-lim", max_frames: int | None = None,
                 stop_threshold: float = 0.5):
        self.network = network_of(model_or_network)
        self.chunk_frames = check_int("stream_speech", "chunk_frames", chunk_frames,
                                      meaning="mel frames per streamed chunk, 256 samples each; e.g. 32")
        if isinstance(vocoder, str) and vocoder not in VOCODERS:
            raise ValueError(f"unknown vocoder {vocoder!r}; choose one of {', '.join(VOCODERS)} or pass a "
                             "HiFiGANGenerator")
        self.network.step_limit(max_frames)  # a bad max_frames fails here, not at the first chunk
        self.vocoder = load_hifigan("universal") if vocoder == "hifigan" else vocoder
        self.max_frames, self.stop_threshold = max_frames, stop_threshold
        self.frames, self.stopped = 0, False
        self.chunkers: dict[str, ContextChunker] = {}  # the current stream's: "postnet", "vocoder"

    @property
    def buffered_frames(self) -> int:
        """Frames the post-net and vocoder windows hold now (bounded: module docstring)."""
        return sum(c.held for c in self.chunkers.values())

    def postnet_chunker(self, lookahead: int) -> ContextChunker:
        """Normalised decoder frames -> post-net log-mel chunks ``[n, 80]``, exact (module docstring); the first
        chunk has ``lookahead`` more frames (the vocoder's right context)."""
        network, half = self.network, postnet_context(self.network.postnet)

        def apply(window: Tensor, lead: int, count: int) -> Tensor:
            mel = window + network.postnet(window[None])[0]  # [w, 80] -> [1, w, 80] -> [w, 80]
            return network.denormalise(mel[lead:lead + count])

        return ContextChunker(self.chunk_frames, half, half, apply, first_frames=self.chunk_frames + lookahead)

    def vocoder_chunker(self) -> ContextChunker:
        """Log-mel chunks -> waveform chunks ``[256 n]`` (HiFi-GAN: exact; Griffin-Lim: module docstring)."""
        if isinstance(self.vocoder, HiFiGANGenerator):
            generator, context = self.vocoder, hifigan_context(self.vocoder)

            def apply(window: Tensor, lead: int, count: int) -> Tensor:
                audio = generator(window.T[None])[0]  # [w, 80] -> [1, 80, w] -> [w * 256]
                return audio[lead * HOP:(lead + count) * HOP]

            return ContextChunker(self.chunk_frames, context, context, apply)
        chunks = GriffinLimChunks()
        return ContextChunker(self.chunk_frames, chunks.context, chunks.context, chunks)

    def mel_chunks(self, ids: Sequence[int] | Tensor) -> Iterator[Tensor]:
        """The post-net log-mel ``[n, 80]`` in chunks as the decoder makes them (the first one the vocoder's
        right context longer); concatenated, the mel of :meth:`TTSNetwork.infer` (same seed)."""
        ids = check_ids(ids)
        vocoder = self.vocoder_chunker()
        self.chunkers = {"postnet": self.postnet_chunker(vocoder.right), "vocoder": vocoder}
        return self._mel_chunks(ids)

    def stream(self, ids: Sequence[int] | Tensor) -> Iterator[Tensor]:
        """Waveform chunks ``[256 n]`` (22,050 Hz floats) of one sentence's phoneme ids, as they are ready: the
        first once ``chunk_frames`` + the vocoder's right context + the post-net's frames exist."""
        mels = self.mel_chunks(ids)
        return self._stream(mels, self.chunkers["vocoder"])

    @torch.no_grad()
    def _mel_chunks(self, ids: Tensor) -> Iterator[Tensor]:
        postnet = self.chunkers["postnet"]
        self.frames, self.stopped = 0, False
        steps = self.network.infer_steps(ids[None], torch.tensor([ids.numel()]), self.max_frames,
                                         self.stop_threshold)  # [L] -> [1, L]
        for step in steps:
            self.frames += step.frames.shape[1]
            self.stopped = bool(step.stopped[0])
            yield from postnet.push(step.frames[0])  # [1, r, 80] -> [r, 80]
        yield from postnet.finish()

    @torch.no_grad()
    def _stream(self, mels: Iterator[Tensor], vocoder: ContextChunker) -> Iterator[Tensor]:
        for mel in mels:
            yield from vocoder.push(mel)
        yield from vocoder.finish()


def stream_speech(model_or_network: nn.Module, text_or_ids: str | Sequence[int] | Tensor, *,
                  chunk_frames: int = CHUNK_FRAMES, vocoder: str | HiFiGANGenerator = "griffin-lim",
                  max_frames: int | None = None, stop_threshold: float = 0.5) -> Iterator[Tensor]:
    """Waveform chunks ``[256 n]`` (22,050 Hz floats) of one sentence, yielded as the decoder produces frames
    (module docstring: the post-net and HiFi-GAN exact, Griffin-Lim approximate). ``text_or_ids``: English
    text (phonemised by espeak-ng, checked as ``seqmix tts predict`` checks it) or phoneme ids ``[L]``."""
    streamer = SpeechStreamer(model_or_network, chunk_frames=chunk_frames, vocoder=vocoder, max_frames=max_frames,
                              stop_threshold=stop_threshold)
    if isinstance(text_or_ids, str):
        from seqmix.apps.tts.commands import clean_text, phoneme_ids

        network = streamer.network
        _, text_or_ids = phoneme_ids(clean_text(text_or_ids), network.symbols, network.max_phonemes)
    return streamer.stream(text_or_ids)
