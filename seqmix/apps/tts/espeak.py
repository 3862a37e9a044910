"""espeak-ng through ``ctypes``: 16-bit mono speech at 22,050 Hz and its IPA phonemes, with no root.

The library is the one the ``espeakng-loader`` wheel ships (libespeak-ng 1.52 and its data, PyPI, 10 MB:
``pip install espeakng-loader==0.2.4``, or ``pip install -e .[tts]``); without that package, a system
``libespeak-ng.so.1`` (Debian's ``espeak-ng``) is used with its own data. Nothing else is imported (no
torch), so the synthesis workers start fast.

Determinism: espeak-ng keeps state between utterances inside the library (the waveform generator's
phase and pitch-flutter position) that neither ``espeak_Terminate`` / ``espeak_Initialize`` nor
``espeak_ng_SetRandSeed`` resets, so the same sentence spoken twice in one process gives a few samples'
different audio. :func:`speak_fresh` therefore forks a child for every sentence from a process whose
library was initialised but has never spoken: every sentence is spoken from the same state, and its audio
(and the sha256 of its WAV) depends on the sentence alone, not on what was spoken before it or in which
worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import wave
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 22050  # what espeak-ng's voices speak at
VOICE = "en-us"
INSTALL_HINT = "install espeak-ng with `pip install espeakng-loader==0.2.4` (or `pip install -e .[tts]`)"
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8, _ENDPAUSE = 1, 0x1000
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phonememode bit 1: IPA as UTF-8, no separator
_POS_CHARACTER = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def library_paths() -> tuple[str, str | None]:
    """``(libespeak-ng path, data path or None)``: espeakng-loader's when installed, else the system's."""
    try:
        import espeakng_loader
    except ImportError:
        found = ctypes.util.find_library("espeak-ng")
        if found is None:
            raise ModuleNotFoundError(f"espeak-ng is not available (neither the `espeakng-loader` package nor a "
                                      f"system libespeak-ng); {INSTALL_HINT}") from None
        return found, None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@dataclass(frozen=True)
class Utterance:
    """What :func:`speak_fresh` made of one sentence: its IPA phonemes and how many samples it wrote."""

    phonemes: str
    n_samples: int


class Espeak:
    """One process's espeak-ng: :meth:`synthesize` (int16 PCM bytes) and :meth:`phonemize` (IPA).

    The library is global to the process, so there is one instance per process (:func:`engine`)."""

    def __init__(self, voice: str = VOICE) -> None:
        lib_path, data_path = library_paths()
        lib = ctypes.CDLL(lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     data_path.encode() if data_path else None, 0)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng ({lib_path}) did not start (it answered {rate}, expected a sample rate "
                               f"of {SAMPLE_RATE}); {INSTALL_HINT}")
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}; use {VOICE!r}")
        self._chunks: list[bytes] = []

        def collect(samples, count, _events) -> int:
            if count > 0:
                self._chunks.append(ctypes.string_at(samples, count * 2))
            return 0  # 0: go on

        self._callback = _SYNTH_CALLBACK(collect)  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def synthesize(self, text: str) -> bytes:
        """``text`` spoken: little-endian int16 mono PCM at :data:`SAMPLE_RATE` (with the final pause)."""
        self._chunks.clear()
        data = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng could not speak {text[:60]!r} (status {status})")
        return b"".join(self._chunks)

    def phonemize(self, text: str) -> str:
        """``text``'s IPA phonemes (stress marks included) as espeak-ng reads it; words are separated by a
        space, clauses (commas, sentence ends) by ``", "``. Empty when espeak-ng reads nothing in it."""
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_char_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value:  # espeak moves the pointer past each clause; NULL (None) at the end
            clause = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
            if clause and clause.strip():
                clauses.append(clause.decode("utf-8").strip())
        return ", ".join(clauses)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """This process's :class:`Espeak` (made on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


def write_pcm_wav(path: Path, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> None:
    """int16 mono PCM bytes as a WAV file (the stdlib ``wave`` module; fixed header, so the bytes are
    reproducible)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)


def speak_fresh(text: str, wav_path: str | Path) -> Utterance:
    """Speak ``text`` into the WAV ``wav_path`` (written whole: a temporary file renamed onto it) from a
    never-used espeak-ng state: a forked child speaks it (module docstring) and reports the phonemes."""
    espeak = engine()  # initialised here, in the parent, before any speech: every child starts from it
    wav_path = Path(wav_path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: speak, write, report, exit without running the parent's cleanup
        code = 1
        try:
            os.close(read_end)
            pcm = espeak.synthesize(text)
            tmp = wav_path.with_name(f".{wav_path.name}.{os.getpid()}.tmp")
            write_pcm_wav(tmp, pcm)
            os.replace(tmp, wav_path)
            report = json.dumps({"phonemes": espeak.phonemize(text), "n_samples": len(pcm) // 2})
            os.write(write_end, report.encode("utf-8"))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not report:
        raise RuntimeError(f"espeak-ng failed on {text[:60]!r} (child exit status {status})")
    fields = json.loads(report)
    return Utterance(phonemes=fields["phonemes"], n_samples=int(fields["n_samples"]))
