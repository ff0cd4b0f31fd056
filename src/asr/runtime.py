"""A light inference runtime: audio files or a live stream -> text, importing torch and the kernels only.

No Lightning, Hydra or W&B: a cold ``scripts/transcribe.py`` pays for torch's import and little else. It runs

* an exported folder (:mod:`asr.export.bundle`): ``backend="torchscript"`` loads ``model.ts`` with the C++ kernels
  from the folder's own ``libshrinkml_kernels.so`` (this package is not needed for that part), ``backend="onnx"``
  runs ``encoder.onnx`` / ``decoder.onnx`` in ONNX Runtime;
* or a trained checkpoint (:func:`load_checkpoint_model`, then :meth:`Recognizer.from_model`), on the model's own
  modules and kernels.

Every backend offers the same two steps (:class:`asr.export.graphs.EncoderStep` / ``DecoderStep``), so decoding
is one code path: offline (:meth:`Recognizer.transcribe`: greedy or beam search) and streaming
(:meth:`Recognizer.stream`: partial results as MoChA's hard attention commits to tokens; the result equals offline
greedy decoding).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asr.checkpoint_file import read_checkpoint
from asr.data.features import FeatureConfig, GlobalCMVN, StreamingFeatures, log_mel
from asr.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from asr.model.asr_model import decode_length_limit
from asr.model.decoder import beam_search_steps
from common.errors import KnownError

BACKENDS = ("auto", "torchscript", "onnx", "model")


class RuntimeError_(KnownError, ValueError):
    """An exported folder or checkpoint that cannot be loaded, or a backend that is not available."""


@dataclass
class Hypotheses:
    """Decoder state of ``N`` hypotheses: ``h``, ``c`` ``(N, H)``, ``context`` ``(N, D)``, ``boundary`` ``(N,)``."""

    h: torch.Tensor
    c: torch.Tensor
    context: torch.Tensor
    boundary: torch.Tensor

    def select(self, index: torch.Tensor) -> Hypotheses:
        return Hypotheses(self.h[index], self.c[index], self.context[index], self.boundary[index])


class _TorchScriptSteps:
    """``model.ts`` with its kernel library (``torch.ops.load_library``)."""

    def __init__(self, folder: Path):
        library = folder / "libshrinkml_kernels.so"
        try:
            if not hasattr(torch.ops.shrinkml_lowrank, "decode_step"):
                torch.ops.load_library(str(library))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                self.module = torch.jit.load(str(folder / "model.ts"))
        except (OSError, RuntimeError) as err:
            raise RuntimeError_(f"{folder}: the TorchScript model or its kernel library {library.name} cannot be "
                                f"loaded ({str(err).splitlines()[0]}); export again with this torch version, or use "
                                "backend=onnx") from err

    # The graphs are a few operations around the kernels: the profiling executor's optimization passes cost more on
    # the first calls of each input shape (0.1-0.2 s, most of a cold transcription) than they could save.
    def encode(self, features, h, c):
        with torch.jit.optimized_execution(False):
            return self.module.encode(features, h, c)

    def step(self, tokens, state: Hypotheses, memory, mono, chunk, fallback: bool):
        with torch.jit.optimized_execution(False):
            return self.module.step(tokens, state.h, state.c, state.context, state.boundary, memory, mono, chunk,
                                    fallback)

    def greedy(self, memory, mono, chunk, max_len: int, fallback: bool) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return self.module.greedy(memory, mono, chunk, max_len, fallback)


class _OnnxSteps:
    """``encoder.onnx`` and ``decoder.onnx`` in ONNX Runtime (``threads`` intra-op threads each)."""

    def __init__(self, folder: Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeError_("backend=onnx needs ONNX Runtime: pip install onnxruntime") from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # int8-stored weights (asr.export.onnx_storage) are to be dequantized once: ONNX Runtime would otherwise fuse
        # each DequantizeLinear with its MatMul into an integer product on dynamically quantized activations
        # (measured: differences up to 7e-3 in the attention keys)
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.encoder = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(folder / "decoder.onnx"), options, providers=["CPUExecutionProvider"])

    def encode(self, features, h, c):
        out = self.encoder.run(None, {"features": features.numpy(), "h": h.numpy(), "c": c.numpy()})
        return tuple(torch.from_numpy(o) for o in out)

    def step(self, tokens, state: Hypotheses, memory, mono, chunk, fallback: bool):
        feeds = {"tokens": tokens.numpy(), "h": state.h.numpy(), "c": state.c.numpy(),
                 "context": state.context.numpy(), "boundary": state.boundary.numpy(), "memory": memory.numpy(),
                 "mono_keys": mono.numpy(), "chunk_keys": chunk.numpy(),
                 "fallback": torch.tensor([fallback]).numpy()}
        return tuple(torch.from_numpy(o) for o in self.decoder.run(None, feeds))


class _ModelSteps:
    """A live :class:`asr.model.asr_model.AsrModel` (its own modules and kernels), through the export's steps."""

    def __init__(self, model: nn.Module):
        from asr.export.graphs import DecoderStep, EncoderStep
        from asr.model import fast_decode

        kernels = fast_decode.step_plan(model.decoder) is not None
        self.encoder = EncoderStep(model, kernels=kernels)
        self.decoder = DecoderStep(model, kernels=kernels)
        if kernels:
            self.greedy = self._greedy

    def _greedy(self, memory, mono, chunk, max_len: int, fallback: bool) -> torch.Tensor:
        from asr.model import fast_decode

        plan = self.decoder.plan
        plan.fallback = fallback
        mask = torch.ones(1, memory.shape[1], dtype=torch.bool)
        return fast_decode.fast_greedy(plan, memory, (mono, chunk), mask, max_len)[0]

    def encode(self, features, h, c):
        return self.encoder(features, h, c)

    def step(self, tokens, state: Hypotheses, memory, mono, chunk, fallback: bool):
        return self.decoder(tokens, state.h, state.c, state.context, state.boundary, memory, mono, chunk,
                            torch.tensor([fallback]))


class Recognizer:
    """Speech to text with any backend's two steps (see the module docstring)."""

    def __init__(self, steps, manifest: Mapping, tokenizer: Tokenizer):
        self.steps = steps
        self.features = FeatureConfig(**manifest["features"])
        self.cmvn = GlobalCMVN(torch.tensor(manifest["cmvn_mean"]), torch.tensor(manifest["cmvn_std"]))
        self.tokenizer = tokenizer
        encoder, decoder = manifest["encoder"], manifest["decoder"]
        self.layers, self.encoder_size = encoder["layers"], encoder["hidden_size"]
        self.reduction = encoder["reduction"]
        self.decoder_size, self.vocab_size = decoder["hidden_size"], decoder["vocab_size"]
        self.hard_fallback = bool(decoder["hard_fallback"])
        self.decoding = dict(manifest["decoding"])

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, backend: str = "auto", threads: int = 1) -> Recognizer:
        """An exported folder; ``backend`` ``auto`` takes TorchScript with the kernels where the folder has it."""
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise RuntimeError_(f"{folder} is not an exported model (no manifest.json). Fix: make one with "
                                "'python scripts/export.py ckpt=<checkpoint> out_dir=<folder>'")
        manifest = json.loads(path.read_text())
        formats = manifest.get("formats", [])
        if backend == "auto":
            backend = "torchscript" if "torchscript" in formats else "onnx"
        if backend not in ("torchscript", "onnx") or backend not in formats:
            raise RuntimeError_(f"{folder} holds formats {formats}; backend={backend} is not one of them")
        steps = _TorchScriptSteps(folder) if backend == "torchscript" else _OnnxSteps(folder, threads)
        return cls(steps, manifest, Tokenizer(model_path=folder / manifest["tokenizer"]))

    @classmethod
    def from_model(cls, model: nn.Module, assets, decoding: Mapping) -> Recognizer:
        """A live model (e.g. from :func:`load_checkpoint_model`) with its ``assets`` and ``decoding`` settings."""
        from asr.export.bundle import manifest

        return cls(_ModelSteps(model.eval()), manifest(model, assets, dict(decoding), []), assets.tokenizer)

    # -- offline ---------------------------------------------------------------------------------
    def normalized_features(self, wave: torch.Tensor) -> torch.Tensor:
        """``(num_samples,)`` at the model's sample rate -> normalized features ``(T, F)``."""
        return self.cmvn(log_mel(wave, self.features))

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized features ``(T, F)`` -> ``memory`` ``(1, T', D)`` and its keys (whole groups only, as offline)."""
        usable = features.shape[0] // self.reduction * self.reduction
        h = torch.zeros(self.layers, 1, self.encoder_size)
        memory, mono, chunk, _, _ = self.steps.encode(features[:usable].unsqueeze(0).contiguous(), h, h.clone())
        return memory, mono, chunk

    def initial_state(self, rows: int = 1) -> Hypotheses:
        return Hypotheses(torch.zeros(rows, self.decoder_size), torch.zeros(rows, self.decoder_size),
                          torch.zeros(rows, self.encoder_size), torch.zeros(rows, dtype=torch.long))

    def max_len(self, frames: int) -> int:
        """Decoder steps allowed for ``frames`` encoder frames (as the model's own decoding)."""
        return decode_length_limit(frames, self.decoding["max_decode_ratio"])

    def decode(self, features: torch.Tensor, beam_size: int | None = None) -> list[int]:
        """Token ids of normalized features ``(T, F)``: greedy for ``beam_size`` 0, beam search above; None: the
        model's own decoding setting."""
        beam_size = self.decoding["beam_size"] if beam_size is None else beam_size
        memory, mono, chunk = self.encode(features)
        if memory.shape[1] == 0:
            return []
        fallback = self.hard_fallback

        def step(tokens: torch.Tensor, state: Hypotheses) -> tuple[torch.Tensor, Hypotheses]:
            log_probs, *rest = self.steps.step(tokens, state, memory, mono, chunk, fallback)
            return log_probs, Hypotheses(*rest)

        max_len = self.max_len(memory.shape[1])
        if beam_size > 0:
            return beam_search_steps(step, self.initial_state(), self.vocab_size, beam_size, max_len,
                                     self.decoding["length_penalty"])
        if hasattr(self.steps, "greedy"):  # the whole loop in one C++ call
            ids = self.steps.greedy(memory, mono, chunk, max_len, fallback)[0].tolist()
            return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
        return _greedy(step, self.initial_state(), max_len)

    def transcribe(self, wave: torch.Tensor, beam_size: int | None = None) -> str:
        """Text of a waveform ``(num_samples,)`` at the model's sample rate."""
        return self.tokenizer.decode(self.decode(self.normalized_features(wave), beam_size))

    def stream(self) -> Stream:
        """A new stream of one utterance (greedy, partial results)."""
        return Stream(self)


def _greedy(step: Callable, state: Hypotheses, max_len: int) -> list[int]:
    tokens, out = torch.tensor([BOS_ID]), []
    for _ in range(max_len):
        log_probs, state = step(tokens, state)
        token = int(log_probs.argmax(dim=-1))
        if token == EOS_ID:
            break
        out.append(token)
        tokens = torch.tensor([token])
    return out


class Stream:
    """Streaming greedy recognition of one utterance: :meth:`accept_audio` chunk by chunk, then :meth:`finish`.

    Features are computed per whole frame as audio arrives and buffered to whole groups of the encoder's time
    reduction; a decoder step whose attention finds no frame yet (``boundary == T``) is dropped and run again when
    more frames arrive, so the tokens equal offline greedy decoding's.
    """

    def __init__(self, recognizer: Recognizer):
        self.recognizer = recognizer
        self.features = StreamingFeatures(recognizer.features)
        self.pending = torch.zeros(0, recognizer.features.n_mels)  # features waiting for a whole group
        zeros = torch.zeros(recognizer.layers, 1, recognizer.encoder_size)
        self.encoder_state = (zeros, zeros.clone())
        self.memory = self.mono = self.chunk = None
        self.state = recognizer.initial_state()
        self.previous = torch.tensor([BOS_ID])
        self.tokens: list[int] = []
        self.done = False

    @torch.no_grad()
    def accept_audio(self, samples: torch.Tensor) -> list[int]:
        """Float samples ``(n,)`` -> the tokens they made final."""
        feats = self.features.push(samples)
        if feats is not None:
            self._encode(self.recognizer.cmvn(feats))
        return self._decode(final=False)

    @torch.no_grad()
    def finish(self) -> list[int]:
        """End of input: decode what is left."""
        return self._decode(final=True)

    def text(self) -> str:
        return self.recognizer.tokenizer.decode(self.tokens)

    def _encode(self, feats: torch.Tensor) -> None:
        feats = torch.cat([self.pending, feats])
        usable = feats.shape[0] // self.recognizer.reduction * self.recognizer.reduction
        self.pending = feats[usable:]
        if usable == 0:
            return
        memory, mono, chunk, h, c = self.recognizer.steps.encode(feats[:usable].unsqueeze(0).contiguous(),
                                                                 *self.encoder_state)
        self.encoder_state = (h, c)
        if self.memory is None:
            self.memory, self.mono, self.chunk = memory, mono, chunk
        else:
            self.memory = torch.cat([self.memory, memory], dim=1)
            self.mono = torch.cat([self.mono, mono], dim=1)
            self.chunk = torch.cat([self.chunk, chunk], dim=1)

    def _decode(self, final: bool) -> list[int]:
        recognizer = self.recognizer
        if self.memory is None:
            if final:
                self.done = True
            return []
        frames = self.memory.shape[1]
        fallback = final and recognizer.hard_fallback
        emitted: list[int] = []
        while not self.done and len(self.tokens) < recognizer.max_len(frames):  # offline greedy's step limit
            log_probs, *rest = recognizer.steps.step(self.previous, self.state, self.memory, self.mono, self.chunk,
                                                     fallback)
            state = Hypotheses(*rest)
            if int(state.boundary[0]) >= frames and not final:
                break  # nothing fired yet: wait for more audio
            self.state = state
            token = int(log_probs.argmax(dim=-1))
            self.previous = torch.tensor([token])
            if token == EOS_ID:
                self.done = True
                break
            self.tokens.append(token)
            emitted.append(token)
        return emitted


# -- checkpoints without Lightning -----------------------------------------------------------------
class _Holder(nn.Module):
    """The ``model`` attribute of a training module, so that state-dict keys and compression records match."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def load_checkpoint_model(path: str | Path, prepare: Callable[[nn.Module, dict], object] | None = None):
    """``(model, assets, decoding)`` of a training checkpoint, without importing Lightning.

    ``prepare(holder, checkpoint)`` restores a structure the checkpoint records before the weights load (e.g.
    ``compress.checkpoint.restore_compression``); ``holder.model`` is the model.
    """
    from asr.assets import AsrAssets
    from asr.model.asr_model import AsrModel

    checkpoint = read_checkpoint(path)  # a missing, damaged or foreign file: one line
    try:
        hp = checkpoint["hyper_parameters"]
        holder = _Holder(AsrModel(hp["vocab_size"], hp["input_size"], **hp["model"]))
        assets = AsrAssets.from_dict(checkpoint["asr_assets"])
    except (KeyError, TypeError) as err:
        raise RuntimeError_(f"checkpoint {path} is not a shrinkml training checkpoint ({type(err).__name__}: {err}); "
                            "give the .ckpt a training run wrote") from err
    decoding = dict(hp["decoding"])
    holder.model.set_decoding(decoding["max_decode_ratio"], decoding["hard_fallback"],
                              decoding.get("sparse_min_sparsity"))
    if prepare is not None:
        prepare(holder, checkpoint)
    state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        holder.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError_(f"checkpoint {path} does not fit the model it describes (a compressed checkpoint needs "
                            f"prepare=restore_compression): {str(err).splitlines()[0]}") from err
    return holder.model.eval(), assets, decoding
