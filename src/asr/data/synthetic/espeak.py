"""Speech synthesis with eSpeak NG through ctypes, from the ``espeakng-loader`` wheel.

The wheel ships ``libespeak-ng`` and its ``espeak-ng-data`` folder, so no Debian package
is needed. One :class:`Espeak` per process: the C library keeps global state.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceSettings:
    """One synthetic speaker's voice: an eSpeak voice name plus prosody.

    ``name`` is ``<language>+<variant>`` (e.g. ``en-US+f3``); ``rate`` in words per minute
    (80-450), ``pitch`` and ``pitch_range`` in eSpeak's 0-100 scale.
    """

    name: str
    rate: int
    pitch: int
    pitch_range: int


class EspeakError(RuntimeError):
    """The eSpeak NG library could not be loaded or refused a request."""


class Espeak:
    """A synchronous eSpeak NG synthesizer returning int16 waveforms at :attr:`sample_rate`."""

    def __init__(self, library_path: str | None = None, data_parent: str | None = None):
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - dependency of the project
            raise EspeakError("the 'espeakng-loader' package is missing: run 'make setup'") from err
        library_path = library_path or espeakng_loader.get_library_path()
        data_parent = data_parent or str(Path(espeakng_loader.get_data_path()).parent)
        try:
            self._lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise EspeakError(f"cannot load eSpeak NG from {library_path}: {err}") from err
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self._set_rand_seed = getattr(self._lib, "espeak_ng_SetRandSeed", None)  # eSpeak NG >= 1.52
        if self._set_rand_seed is not None:
            self._set_rand_seed.argtypes = [ctypes.c_long]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed with data folder {data_parent} (it must hold espeak-ng-data)")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the C side stores the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, _events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, voice: VoiceSettings, seed: int | None = None) -> np.ndarray:
        """Speak ``text`` with ``voice``; returns int16 samples, shape ``(num_samples,)``.

        ``seed`` seeds eSpeak's own random generator (breath and Klatt noise), which is seeded
        from the clock otherwise. The output also depends on what this process synthesized
        before: eSpeak keeps pitch-flutter and wave-phase state between calls.
        """
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise EspeakError(f"eSpeak NG has no voice named {voice.name!r}")
        if seed is not None and self._set_rand_seed is not None:
            self._set_rand_seed(int(seed))
        for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                             (_PARAM_RANGE, voice.pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed (status {status}) on {text!r}")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)
