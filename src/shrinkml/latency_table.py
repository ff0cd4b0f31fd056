"""The measured-latency table of ``by=latency`` (:class:`compress.latency_cost.LatencyTable`): built here, where
the recognizer's kernels meet the compression package.

Every time is batch-1 decoding time on ``threads`` torch threads, in seconds per second of audio, measured in
the kernels greedy decoding runs (:meth:`AsrModel.decode`, as :func:`asr.latency.real_time_factor` times it):

* an encoder LSTM layer (context ``encode``): the layer's calls timed (forward hooks) inside ``model.encode`` of
  the first ``target_utterances`` utterances, so the layers before it have just run and the cache holds what it
  holds in decoding; dense is torch's fused LSTM, factorized the C++ rank-``k`` recurrence of
  :mod:`asr.model.lowrank_lstm`, pruned the sparse recurrence of :mod:`asr.model.sparse`. Variant ``j`` of the
  model has every encoder layer at its ``j``-th option (grid ranks, then the other options asked for);
* a linear applied outside the decoder step (MoChA's key projections, once over all encoder frames of an
  utterance; context ``call``): the module (``nn.Linear``, or the two Linears of
  :class:`compress.lowrank.LowRankLinear`) on the inputs it received while decoding those utterances (recorded
  once; hooks on the decoder would switch its C++ step off, so these are not timed inside decoding);
* the decoder cell and the linears of the decoder step (query projections, output layers), which decoding runs
  inside the C++ step of :mod:`asr.model.fast_decode` (context ``decode_step``): that step, ``step_calls`` calls
  per sample on fixed inputs, with the plan of the model with one target factorized against the all-dense
  plan (every other weight shared). The attention scan sees only ``chunk_size`` frames, so its length (which
  follows the weights) does not blur the difference. A target's dense time is that of its own products alone
  (the ATen products the step issues, timed in a loop, less the same loop's cost on a ``1 x 1`` product: the cost
  of calling from Python, which the C++ step does not pay), its time at rank ``k`` that plus the step's measured
  difference (all moved up together where a rank saves more than that own time: only differences count). Where
  the C++ step does not run (no extension), these are timed as modules like the keys.

Besides ranks, a target is timed at every other option asked for (``extra_options``, any form of
:mod:`compress.options`; the search passes its space's options): a sparsity (``{"sparsity": 0.8, "pattern":
"4x1"}``) or a rank with pruned factors (``{"rank": 96, "sparsity": 0.5, "pattern": "4x1"}``), the variant built
by :func:`compress.scheme.apply_scheme` (magnitude pruning at once) in the same context as the ranks. Decoding then
runs whatever kernels it picks for that variant: a matrix with at least ``decoding.sparse_min_sparsity`` zeros on
the sparse kernels in the block format they choose, a factorized encoder layer with pruned factors on whatever
recurrence :mod:`asr.model.lstm` runs for it; the table measures that path and keys the threshold
(:func:`sparse_threshold`, read from the model). These times are stored per :func:`compress.options.option_key`,
unsmoothed, and looked up exactly (an option not measured is an error, never a dense time).

The decoder step's targets are timed one at a time in a tight loop of steps; whether their savings add up in
real decoding is measured last (:func:`step_scale`): the dense model and four models with every step target
compressed together decode all ``utterances`` greedily in the dense model's decoder steps, and the table scales the
step targets' savings by the least-squares ratio of measured to summed savings (0.96 on the embedded baseline,
2026-12-05, Intel Xeon, AVX-512).

Per-use times become seconds per audio second through ``Target.uses_per_second``
(:func:`compress.targets.profile_uses`, counted while decoding the ``utterances`` one at a time). Each target
is timed dense and at a grid of ranks (geometric from 1 to the largest rank that pays, plus ranks asked for:
the search asks for its space's options), all variants alternating in rotating order
(:func:`asr.latency.alternate`); every sample is short (one call, or ``step_calls`` steps) and a variant's time
is the ``statistic`` of its ``repeats`` (``step_repeats`` for the step) samples: ``min`` by default, since on a
busy machine most samples are slowed by the other processes. Samples are timed on the ``clock``: ``cpu`` (the
default, one thread only) is the decoding thread's CPU time, which leaves out the time other processes hold the
core (on 2026-12-03, five processes on two cores, a dense batch-1 decode took 9.7-15.7 ms per second of audio by
the wall clock and 6.0-6.8 ms by the thread's CPU time, min of 7 per utterance); ``wall`` is elapsed time. The
times at growing rank are made non-decreasing (:func:`compress.latency_cost.isotonic`).
``fixed`` is the dense model's whole decoding time
(:func:`whole_model_seconds`: per utterance the same statistic, utterances alternating) minus the sum of the
dense target times; ``meta.real_time_factor`` records :func:`asr.latency.real_time_factor` (median of whole passes,
which carry the machine's load) beside it. A target no rank pays for (MoChA's ``chunk_v``, ``1 x 256``) is never
factorized: its time stays in ``fixed`` (dense 0, no points).

A table is cached under ``dir`` by its key (:func:`machine_key`): CPU model, instruction sets (torch's CPU
capability and the CPU's avx/fma/amx flags, :func:`isa_flags`), torch version, kernel backend, the checkpoint's
SHA-256, the measurement settings (:data:`compress.latency_cost.MEASUREMENT_FIELDS`) and the sparse-kernel
threshold; :func:`ensure_table` reuses the table of this key and never another's (a table of an older, shorter
key or an older format is measured again; one that lacks an option asked for is measured again with it).
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from torch import nn

from asr import kernels
from asr.data.tokenizer import BOS_ID, EOS_ID
from asr.latency import alternate, real_time_factor, single_utterances
from asr.model import lowrank_lstm
from compress.cost import FULL, CostModelError, check_by
from compress.latency_cost import MEASUREMENT_FIELDS, LatencyTable, TargetLatency, isotonic, table_path
from compress.options import Option, normalize, option_key
from compress.scheme import Scheme, apply_scheme, file_fingerprint
from compress.svd import SvdCache
from compress.targets import Target, profile_uses

log = logging.getLogger(__name__)

STEP_MODULES = ("decoder.cell", "decoder.attention.mono_query", "decoder.attention.chunk_query",
                "decoder.attention.chunk_v", "decoder.pre_output", "decoder.output")  # run inside the decoder step

Utterance = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LatencySettings:
    """The ``latency`` config group (``conf/latency/default.yaml``, the one source of its defaults)."""

    dir: str
    threads: int
    repeats: int
    grid: int
    utterances: int
    target_utterances: int
    step_calls: int
    step_repeats: int
    statistic: str
    clock: str
    rebuild: bool

    @classmethod
    def from_config(cls, cfg: Mapping) -> LatencySettings:
        settings = cls(**{name: cfg[name] for name in cls.__dataclass_fields__})
        for name in ("threads", "repeats", "grid", "utterances", "target_utterances", "step_calls", "step_repeats"):
            if int(getattr(settings, name)) < 1:
                raise CostModelError(f"latency.{name}={getattr(settings, name)} must be >= 1")
        if settings.statistic not in STATISTICS:
            raise CostModelError(f"latency.statistic={settings.statistic!r}; choose one of {', '.join(STATISTICS)}")
        if settings.clock not in CLOCKS:
            raise CostModelError(f"latency.clock={settings.clock!r}; choose one of {', '.join(CLOCKS)}")
        if settings.clock == "cpu" and settings.threads > 1:
            raise CostModelError(f"latency.clock=cpu counts the decoding thread only, not torch's other "
                                 f"{settings.threads - 1} thread(s): use latency.clock=wall with latency.threads > 1")
        return settings


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


ISA_PREFIXES = ("avx", "fma", "f16c", "amx", "sse4")  # the /proc/cpuinfo flags the CPU kernels dispatch on


def isa_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction-set flags of the CPU that oneDNN, MKL and ATen's vectorized kernels dispatch on (avx,
    avx2, avx512*, avx_vnni, fma, f16c, amx*, sse4*), sorted, from the first ``flags`` line of ``cpuinfo``
    (default: ``/proc/cpuinfo``); empty where it cannot be read. "AMD EPYC" names a Zen 3 with AVX2 and a later
    generation with AVX-512: only these flags tell them apart."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "flags":
            return sorted({flag for flag in value.split() if flag.startswith(ISA_PREFIXES)})
    return []


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels run with (``torch.backends.cpu.get_cpu_capability()``:
    ``DEFAULT``, ``AVX2``, ``AVX512``, ...; ``ATEN_CPU_CAPABILITY`` lowers it)."""
    return str(torch.backends.cpu.get_cpu_capability())


def sparse_threshold(model: nn.Module) -> float | None:
    """The share of zeros from which ``model`` decodes a pruned matrix on the sparse kernels (what
    ``AsrModel.set_decoding`` set from ``decoding.sparse_min_sparsity``; None: never, or a model without them)."""
    for module in model.modules():
        if hasattr(type(module), "sparse_min_sparsity"):
            return module.sparse_min_sparsity
    return None


def machine_key(ckpt: str | Path, settings: LatencySettings, sha256: str | None = None, *,
                sparse_min_sparsity: float | None) -> dict:
    """The cache key of a table (:data:`compress.latency_cost.KEY_FIELDS`): CPU model, torch's CPU capability and
    the CPU's instruction-set flags, torch version, kernel backend and the C++ kernels' sources
    (:func:`asr.kernels.content_hash`: a faster kernel makes every time another), checkpoint SHA-256, the measurement
    ``settings`` (thread count, clock, statistic, repeats, grid, utterances, step calls and repeats) and the
    decoding's ``sparse_min_sparsity`` (:func:`sparse_threshold` of the model measured)."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "cpu_flags": isa_flags(),
            "torch": torch.__version__, "backend": lowrank_lstm.backend(), "kernels": kernels.content_hash(),
            "checkpoint_sha256": sha256 or file_fingerprint(ckpt), "method": MEASUREMENT_METHOD,
            **{name: getattr(settings, name) for name in MEASUREMENT_FIELDS},
            "sparse_min_sparsity": sparse_min_sparsity}


def largest_paying_rank(shape: tuple[int, int]) -> int:
    """The largest ``k`` with ``k (m + n) < m n`` (0 when none)."""
    m, n = shape
    return (m * n - 1) // (m + n)


def rank_grid(shape: tuple[int, int], size: int, extra: Sequence[int | str] = ()) -> list[int]:
    """``size`` ranks geometric from 1 to the largest rank that pays (rounded, distinct), plus the paying
    ranks of ``extra``; empty when no rank pays."""
    top = largest_paying_rank(shape)
    if top < 1:
        return []
    grid = {1, top} | {round(top ** (j / (size - 1))) for j in range(size)} if size > 1 else {1, top}
    grid |= {int(r) for r in extra if r != FULL and 1 <= int(r) <= top}
    return sorted(grid)


def split_options(options: Sequence[Option]) -> tuple[list[int], list[dict]]:
    """``options`` (any form of :mod:`compress.options`) as the ranks alone (interpolated in the table's rank
    points) and the other options (timed each: sparsities, ranks with pruned factors), in canonical form, each
    once; ``full`` is left out (the dense time)."""
    ranks: list[int] = []
    others: dict[str, dict] = {}
    for option in options:
        setting = normalize(option)
        if setting == FULL:
            continue
        if set(setting) == {"rank"}:
            ranks.append(setting["rank"])
        else:
            others.setdefault(option_key(setting), setting)
    return ranks, list(others.values())


Column = tuple[str, Option]  # a measured variant of one target: its label in the table ("5", "s0.8@4x1") and option


def columns_of(target: Target, size: int, extra: Sequence[Option]) -> list[Column]:
    """The variants one target is timed at: its rank grid (:func:`rank_grid` with the ranks of ``extra``), labelled
    by the rank, then the other options of ``extra``, labelled by :func:`compress.options.option_key`."""
    ranks, others = split_options(extra)
    return ([(str(rank), rank) for rank in rank_grid(target.shape, size, ranks)]
            + [(option_key(option), option) for option in others])


class _Recorder:
    """Forward hooks that keep the inputs of some modules' calls (batch 1, detached)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        self.handles = [model.get_submodule(name).register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(_module, args, _out):
            self.inputs[name].append(args[0].detach().clone())

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _uses(target: Target, inputs: Sequence[torch.Tensor]) -> int:
    """Matrix-vector products of ``inputs`` as :func:`compress.targets.profile_uses` counts them."""
    if target.kind == "linear":
        return sum(x.numel() // x.shape[-1] for x in inputs)
    return sum(x.shape[0] * (x.shape[1] if x.dim() == 3 else 1) for x in inputs)


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
# the version of the measuring code, in every table's key: 2: the decoder step's dense products less the cost of
# calling them from Python
MEASUREMENT_METHOD = 2


def _timed(fn: Callable[[], object], clock: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        start = clock()
        fn()
        return clock() - start

    return run


STATISTICS = {"median": statistics.median, "min": min}


def _summaries(runs: Mapping[str, Callable[[], float]], repeats: int, statistic: str) -> dict[str, float]:
    """``statistic`` (median or min) over ``repeats`` of the seconds of every run, timed alternating in rotating
    order after one warm-up round (:func:`asr.latency.alternate`)."""
    with torch.no_grad():
        samples = alternate(runs, repeats, warmup=1)
    return {name: STATISTICS[statistic](values) for name, values in samples.items()}


def _variant(model: nn.Module, targets: Sequence[Target], cache: SvdCache, settings: Mapping[str, Option]
             ) -> nn.Module:
    """A copy of ``model`` with ``settings`` applied (a factorization from ``cache``, magnitude pruning at once)."""
    return apply_scheme(model, Scheme.build(targets, settings, "latency-table"), targets, cache).eval()


def _step_inputs(model: nn.Module, utterance: Utterance) -> tuple:
    """Fixed decoder-step inputs: the first ``chunk_size`` encoder frames of ``utterance`` (so the attention
    scan, whose length follows the weights, stays within one chunk), a state and a previous token."""
    decoder = model.decoder
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        memory, _ = model.encode(*utterance)
        memory = memory[:, : decoder.attention.chunk_size].contiguous()
        keys = decoder.attention.keys(memory)
        mask = torch.ones(1, memory.shape[1], dtype=torch.bool)
        state = decoder.initial_state(memory)
        state.h = 0.5 * torch.randn(state.h.shape, generator=generator)
        state.c = 0.5 * torch.randn(state.c.shape, generator=generator)
        state.context = memory[:, -1].clone()
    tokens = torch.tensor([min(3, decoder.vocab_size - 1)])
    return memory, keys, mask, tokens, state


def _step_plan(model: nn.Module, name: str | None = None, module: nn.Module | None = None):
    """The decoder's C++ step plan, with target ``name`` swapped for ``module`` while the plan is made (then put
    back): every other weight of the plan is the model's own, as in decoding, so only the target differs."""
    if name is None:
        with torch.no_grad():
            return model.decoder.inference_plan()
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    original = getattr(parent, child)
    setattr(parent, child, module)
    try:
        with torch.no_grad():
            return model.decoder.inference_plan()
    finally:
        setattr(parent, child, original)


def _step_run(decoder: nn.Module, plan, inputs: tuple, calls: int, clock: Callable[[], float]
              ) -> Callable[[], float]:
    memory, keys, mask, tokens, state = inputs

    def run() -> None:
        for _ in range(calls):
            decoder.step(memory, keys, mask, tokens, state, plan)

    return _timed(run, clock)


def _chain_run(module: nn.Module | None, calls: int, generator: torch.Generator, clock: Callable[[], float]
               ) -> Callable[[], float]:
    """The ATen products the C++ step issues for dense ``module`` (``addmm``/``mm`` of a 1-row input), ``calls``
    times: the target's own dense time per call, plus what each call from Python costs. ``module`` None: the same
    loop on a ``1 x 1`` product, which is that cost alone (:data:`MEASUREMENT_METHOD`)."""
    if module is None:
        weight, bias = torch.ones(1, 1), torch.zeros(1)
    elif isinstance(module, nn.Linear):
        weight, bias = module.weight, module.bias
    else:  # the decoder cell: one product with its concatenated kernel
        weight, bias = module.kernel, module.bias
    x = torch.randn(1, weight.shape[1], generator=generator)
    weight_t = weight.detach().t()

    def run() -> None:
        for _ in range(calls):
            torch.addmm(bias, x, weight_t) if bias is not None else torch.mm(x, weight_t)

    return _timed(run, clock)


def _call_seconds(variants: Mapping[str, nn.Module], inputs: Sequence[torch.Tensor], settings: LatencySettings
                  ) -> dict[str, float]:
    """Seconds of every variant module over all ``inputs`` (one recorded call each): per variant and input the
    statistic over repeats of that one call, summed over the inputs. Every call is one short sample."""
    runs = {(name, i): _timed(lambda module=module, x=x: module(x), CLOCKS[settings.clock])
            for name, module in variants.items() for i, x in enumerate(inputs)}
    per_call = _summaries(runs, settings.repeats, settings.statistic)
    return {name: sum(per_call[(name, i)] for i in range(len(inputs))) for name in variants}


class _CallClock:
    """Forward pre/post hooks that time the calls of some modules and count their uses (batch-1 rows x frames)."""

    def __init__(self, model: nn.Module, targets: Sequence[Target], clock: Callable[[], float]):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.uses: dict[str, int] = {}
        self.handles = []
        for target in targets:
            module = model.get_submodule(target.name)
            self.handles += [module.register_forward_pre_hook(self._start),
                             module.register_forward_hook(self._stop(target))]
        self._started = 0.0

    def _start(self, _module, _args) -> None:
        self._started = self.clock()

    def _stop(self, target: Target):
        def hook(_module, args, _out) -> None:
            elapsed = self.clock() - self._started
            self.seconds[target.name] = self.seconds.get(target.name, 0.0) + elapsed
            self.uses[target.name] = self.uses.get(target.name, 0) + _uses(target, [args[0]])

        return hook

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _encode_seconds(model: nn.Module, targets: Sequence[Target], timed: Sequence[Target],
                    columns: Mapping[str, Sequence[Column]], utterances: Sequence[Utterance], cache: SvdCache,
                    settings: LatencySettings) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Per-use seconds of the encoder targets ``timed``, each call timed inside ``model.encode`` (in context: the
    layers before it have just run, as in decoding). Variant ``j`` has every timed target at its ``j``-th column
    (a grid rank or another option; dense where it has fewer); per variant, utterance and target the statistic
    over ``repeats``, summed over the utterances and divided by the uses. Returns ``{target: {"dense" | label:
    seconds per use}}`` and the uses per target over the utterances."""
    width = max(len(columns[t.name]) for t in timed)
    variants: dict[str, tuple[nn.Module, dict[str, str]]] = {"dense": (model, {})}
    for j in range(width):
        chosen = {t.name: columns[t.name][j] for t in timed if j < len(columns[t.name])}
        variant = _variant(model, targets, cache, {name: option for name, (_, option) in chosen.items()})
        variants[f"v{j}"] = (variant, {name: label for name, (label, _) in chosen.items()})
    clocks = {name: _CallClock(variant, timed, CLOCKS[settings.clock]) for name, (variant, _) in variants.items()}
    try:
        def run(name: str, utterance: Utterance) -> Callable[[], dict[str, float]]:
            def encode() -> dict[str, float]:
                variants[name][0].encode(*utterance)
                return clocks[name].take()

            return encode

        with torch.no_grad():
            for utterance in utterances:  # the uses of one pass (the same in every variant)
                model.encode(*utterance)
            uses, clocks["dense"].uses = clocks["dense"].uses, {}
            clocks["dense"].take()
            runs = {(name, i): run(name, u) for name in variants for i, u in enumerate(utterances)}
            samples = alternate(runs, settings.repeats, warmup=1)
    finally:
        for clock in clocks.values():
            clock.remove()
    statistic = STATISTICS[settings.statistic]
    out: dict[str, dict[str, float]] = {t.name: {} for t in timed}
    for name, (_, labels) in variants.items():
        for target in timed:
            if name != "dense" and target.name not in labels:
                continue
            seconds = sum(statistic([sample[target.name] for sample in samples[(name, i)]])
                          for i in range(len(utterances)))
            out[target.name]["dense" if name == "dense" else labels[target.name]] = seconds / uses[target.name]
    return out, uses


@torch.no_grad()
def dense_steps(model: nn.Module, utterances: Sequence[Utterance]) -> list[int]:
    """Decoder steps greedy decoding of ``model`` takes per utterance: its tokens plus the end token's step, at most
    ``model.max_len``."""
    steps = []
    for features, lengths in utterances:
        tokens = model.decode(features, lengths, 0)[0]
        _, memory_lengths = model.encode(features, lengths)
        steps.append(min(len(tokens) + 1, model.max_len(int(memory_lengths.max()))))
    return steps


@torch.no_grad()
def decode_steps(model: nn.Module, features: torch.Tensor, lengths: torch.Tensor, steps: int) -> None:
    """Greedy decoding of one utterance (batch 1) as ``AttentionDecoder.greedy`` runs it (encoder, keys, the C++
    step's plan, argmax and the same bookkeeping per step), for exactly ``steps`` decoder steps: a compressed model
    that is not retrained may stop much earlier or run to the length limit, a change of work the table (which counts
    the dense model's tokens) does not model."""
    memory, memory_lengths = model.encode(features, lengths)
    decoder = model.decoder
    mask = torch.arange(memory.shape[1]).unsqueeze(0) < memory_lengths.unsqueeze(1)
    keys = decoder.attention.keys(memory)
    state = decoder.initial_state(memory)
    tokens = torch.full((memory.shape[0],), BOS_ID, dtype=torch.long)
    finished = torch.zeros(memory.shape[0], dtype=torch.bool)
    out: list[int] = []
    plan = decoder.inference_plan()
    for _ in range(steps):
        log_probs, state, _ = decoder.step(memory, keys, mask, tokens, state, plan)
        tokens = log_probs.argmax(dim=-1)
        out += [int(tokens[b]) for b in torch.nonzero(~finished & (tokens != EOS_ID)).flatten().tolist()]
        finished |= tokens == EOS_ID
        bool(finished.all())


STEP_SCALE_LEVELS = (0.25, 0.5, 0.75, 1.0)  # calibration variants: each step target at this quantile of savings
STEP_SCALE_BOUNDS = (0.5, 2.0)


def step_scale(model: nn.Module, targets: Sequence[Target], entries: Mapping[str, TargetLatency],
               columns: Mapping[str, Sequence[Column]], names: Sequence[str], utterances: Sequence[Utterance],
               frame_shift_ms: float, cache: SvdCache, settings: LatencySettings) -> tuple[float, dict]:
    """How much more (or less) the decoder step's targets ``names`` save together, in whole greedy decodes, than the
    sum of their savings in ``entries`` (each measured alone in a tight loop of steps).

    Per level ``q`` of :data:`STEP_SCALE_LEVELS` a variant has every target of ``names`` at the option whose saving
    is at quantile ``q`` of its options' (1: its most saving one); the dense model and the variants decode
    ``utterances`` (all of them: on the longest alone, whose many steps keep the weights in the cache, the savings
    add up; over all, where an utterance's first steps find them evicted by the encoder, they save more) one at a
    time, each in the dense model's number of decoder steps (:func:`decode_steps`), alternating; per utterance the
    statistic over ``repeats``. The measured saving per audio second against the predicted one (the entries'
    savings) gives the least-squares scale through the origin, clipped to :data:`STEP_SCALE_BOUNDS`. Returns it and
    the per-variant numbers."""
    steps = dense_steps(model, utterances)
    audio = sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0
    variants: dict[str, nn.Module] = {"dense": model}
    predicted: dict[str, float] = {}
    for level in STEP_SCALE_LEVELS:
        chosen = {}
        for name in names:
            ordered = sorted((option for _, option in columns[name]), key=lambda o, n=name: -entries[n].seconds(o, n))
            chosen[name] = ordered[round(level * (len(ordered) - 1))]
        predicted[f"q{level}"] = sum(entries[n].dense - entries[n].seconds(o, n) for n, o in chosen.items())
        variants[f"q{level}"] = _variant(model, targets, cache, chosen)
    clock = CLOCKS[settings.clock]
    runs = {(name, i): _timed(lambda m=variant, u=u, n=n: decode_steps(m, *u, n), clock)
            for name, variant in variants.items() for i, (u, n) in enumerate(zip(utterances, steps, strict=True))}
    summaries = _summaries(runs, settings.repeats, settings.statistic)
    total = {name: sum(summaries[(name, i)] for i in range(len(utterances))) / audio for name in variants}
    measured = {name: total["dense"] - total[name] for name in predicted}
    denominator = sum(p * p for p in predicted.values())
    fitted = sum(measured[n] * predicted[n] for n in predicted) / denominator if denominator > 0 else 1.0
    scale = min(max(fitted, STEP_SCALE_BOUNDS[0]), STEP_SCALE_BOUNDS[1])
    if scale != fitted:
        log.warning("latency table: the decoder step's fitted scale %.3g is clipped to %.3g", fitted, scale)
    return scale, {"fitted": fitted, "predicted": predicted, "measured": measured, "dense": total["dense"],
                   "utterances": len(utterances)}


def whole_model_seconds(model: nn.Module, utterances: Sequence[Utterance], frame_shift_ms: float,
                        settings: LatencySettings) -> float:
    """Decoding seconds per audio second of ``model`` (greedy, batch 1, as :func:`asr.latency.real_time_factor`
    decodes): per utterance the statistic over ``repeats`` of its decoding time, utterances alternating in
    rotating order, summed over the utterances and divided by their audio seconds."""
    audio = sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0
    model.eval()
    runs = {i: _timed(lambda u=u: model.decode(*u, 0), CLOCKS[settings.clock]) for i, u in enumerate(utterances)}
    return sum(_summaries(runs, settings.repeats, settings.statistic).values()) / audio


def build_table(model: nn.Module, targets: Sequence[Target], utterances: Sequence[Utterance], frame_shift_ms: float,
                key: Mapping, settings: LatencySettings, cache: SvdCache | None = None,
                extra_ranks: Mapping[str, Sequence[Option]] | None = None,
                extra_options: Mapping[str, Sequence[Option]] | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` (dense) for ``targets`` on batch-1 ``utterances`` (see the module
    docstring); ``key`` is recorded in it. Per target, ``extra_ranks`` and ``extra_options`` (``{target: [option,
    ...]}``, any form of :mod:`compress.options`: the search passes its space's options) add their ranks to the
    grid and time each of their other options (sparsities, ranks with pruned factors). Runs on
    ``settings.threads`` torch threads (restored afterwards)."""
    if not utterances:
        raise CostModelError("the latency table needs at least one utterance (latency.utterances >= 1)")
    started = time.perf_counter()
    cache = cache or SvdCache()
    extra = {t.name: [*(extra_ranks or {}).get(t.name, ()), *(extra_options or {}).get(t.name, ())] for t in targets}
    model = model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        lowrank_lstm.backend()  # build or load the extension before any timing
        audio = sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0

        def decode_all() -> None:
            for features, lengths in utterances:
                model.decode(features, lengths, 0)

        profiled = {t.name: t for t in profile_uses(model, targets, decode_all, audio)}
        whole = whole_model_seconds(model, utterances, frame_shift_ms, settings)
        rtf = real_time_factor(model, utterances, frame_shift_ms, 3)  # for reference: whole passes, median
        with torch.no_grad():
            step_context = hasattr(model, "decoder") and model.decoder.inference_plan() is not None
        columns = {t.name: columns_of(t, settings.grid, extra[t.name]) for t in targets}
        in_step = [t.name for t in targets if step_context and t.name in STEP_MODULES]
        in_encoder = [t for t in targets if t.name.startswith("encoder.") and columns[t.name]]
        called = [t.name for t in targets if t.name not in in_step and t not in in_encoder and columns[t.name]]
        recorder = _Recorder(model, called)
        try:
            with torch.no_grad():
                for features, lengths in utterances[: settings.target_utterances]:
                    model.decode(features, lengths, 0)
        finally:
            recorder.remove()
        step_inputs = _step_inputs(model, utterances[0]) if in_step else None
        encoder_uses: dict[str, int] = {}
        if in_encoder:
            encoded, encoder_uses = _encode_seconds(model, targets, in_encoder, columns,
                                                    utterances[: settings.target_utterances], cache, settings)
        generator = torch.Generator().manual_seed(0)
        entries: dict[str, TargetLatency] = {}
        for target in targets:
            uses = profiled[target.name].uses_per_second
            column = columns[target.name]
            if not column:
                entries[target.name] = TargetLatency(target.shape, 0.0, [], {
                    "kind": target.kind, "uses_per_second": uses,
                    "context": "none: no rank pays and no other option asked for; its time is in fixed"})
                continue
            if target.name in in_step:
                calls = settings.step_calls
                clock = CLOCKS[settings.clock]
                runs = {"dense": _step_run(model.decoder, _step_plan(model), step_inputs, calls, clock)}
                for label, option in column:
                    module = _variant(model, targets, cache, {target.name: option}).get_submodule(target.name)
                    runs[label] = _step_run(model.decoder, _step_plan(model, target.name, module), step_inputs,
                                            calls, clock)
                runs["own"] = _chain_run(model.get_submodule(target.name), calls, generator, clock)
                runs["call_cost"] = _chain_run(None, calls, generator, clock)
                summaries = _summaries(runs, settings.step_repeats, settings.statistic)
                per_call = {name: seconds / calls for name, seconds in summaries.items()}
                # the products' own time without the cost of calling them from Python, which the C++ step does not
                # pay: with it, the dense times were too large and ``fixed`` too small (speed-ups predicted 12% high)
                dense_call = max(0.0, per_call.pop("own") - per_call.pop("call_cost"))
                per_call = {name: dense_call + seconds - per_call["dense"] for name, seconds in per_call.items()}
                # a rank that saves more than the products' own time took (cache effects of the step): the target's
                # times all move up by the same amount (the differences, hence every estimate, stay as measured)
                shift = max(0.0, -min(per_call.values()))
                per_call = {name: seconds + shift for name, seconds in per_call.items()}
                context = f"decode_step ({calls} calls per sample; shifted up {shift:.3g} s per call)"
            elif target.name in encoder_uses:
                per_call = encoded[target.name]
                context = (f"encode (timed inside model.encode, {settings.target_utterances} utterances, "
                           f"{encoder_uses[target.name]} uses)")
            else:
                inputs = recorder.inputs[target.name]
                if not inputs:
                    raise CostModelError(f"target '{target.name}' was not called while decoding; it cannot be timed "
                                         "(exclude it with targets.exclude)")
                count = _uses(target, inputs)
                variants = {"dense": model.get_submodule(target.name)}
                for label, option in column:
                    variants[label] = _variant(model, targets, cache, {target.name: option}).get_submodule(target.name)
                seconds = _call_seconds(variants, inputs, settings)
                per_call = {name: value / count for name, value in seconds.items()}
                context = f"call ({len(inputs)} recorded calls, {count} uses)"
            grid = [int(option) for label, option in column if label == str(option)]
            raw = [per_call[str(rank)] * uses for rank in grid]
            entries[target.name] = TargetLatency(
                target.shape, per_call["dense"] * uses, list(zip(grid, isotonic(raw), strict=True)),
                {"kind": target.kind, "uses_per_second": uses, "context": context,
                 "per_use_seconds": per_call,
                 "raw_points": [[rank, seconds] for rank, seconds in zip(grid, raw, strict=True)]},
                {label: per_call[label] * uses for label, option in column if label != str(option)})
            log.info("latency table: %s dense %.3g s/s, %d ranks, %d other options (%.0f s so far)", target.name,
                     entries[target.name].dense, len(grid), len(column) - len(grid), time.perf_counter() - started)
        fixed = whole - sum(entry.dense for entry in entries.values())
        scaled = [name for name in in_step if columns[name]]
        scale, details = 1.0, {}
        if scaled:
            scale, details = step_scale(model, targets, entries, columns, scaled, utterances, frame_shift_ms, cache,
                                        settings)
            log.info("latency table: the decoder step's savings scaled by %.3g (whole decodes, %.0f s so far)", scale,
                     time.perf_counter() - started)
        meta = {"whole_dense_seconds": whole, "real_time_factor": rtf, "utterances": len(utterances),
                "step_scale": details, "audio_seconds": audio, "statistic": settings.statistic, "clock": settings.clock,
                "repeats": settings.repeats, "grid": settings.grid, "target_utterances": settings.target_utterances,
                "step_calls": settings.step_calls, "step_repeats": settings.step_repeats,
                "created": date.today().isoformat(), "build_seconds": round(time.perf_counter() - started, 1)}
        if fixed < 0:
            log.warning("latency table: the dense targets' times (%.4g s/s) exceed the whole model's (%.4g s/s)",
                        whole - fixed, whole)
        return LatencyTable(dict(key), fixed, entries, meta, scale, scaled)
    finally:
        torch.set_num_threads(previous)


def existing_table(settings: LatencySettings, ckpt: str | Path, sha256: str | None = None, *,
                   sparse_min_sparsity: float | None) -> tuple[LatencyTable | None, Path]:
    """The cached table of this machine, measurement setting, torch, backend, checkpoint and sparse-kernel threshold
    (or None) and its path."""
    key = machine_key(ckpt, settings, sha256, sparse_min_sparsity=sparse_min_sparsity)
    return LatencyTable.find(settings.dir, key), table_path(settings.dir, key)


def ensure_table(model: nn.Module, targets: Sequence[Target], batches: Sequence[dict], frame_shift_ms: float,
                 ckpt: str | Path, settings: LatencySettings, cache: SvdCache | None = None,
                 extra_ranks: Mapping[str, Sequence[Option]] | None = None,
                 extra_options: Mapping[str, Sequence[Option]] | None = None) -> tuple[LatencyTable, Path]:
    """The cached table of this key (:func:`existing_table`, the threshold read from ``model``), else one measured
    now on the first ``settings.utterances`` utterances of ``batches`` and saved (atomically); logs its path and
    build minutes. ``settings.rebuild`` measures again even when a table exists. A cached table that lacks one of
    the options of ``extra_ranks`` / ``extra_options`` is measured again (with the options it had and these)."""
    sha256 = file_fingerprint(ckpt)
    threshold = sparse_threshold(model)
    table, path = existing_table(settings, ckpt, sha256, sparse_min_sparsity=threshold)
    wanted = {t.name: [*(extra_ranks or {}).get(t.name, ()), *(extra_options or {}).get(t.name, ())] for t in targets}
    if table is not None and not settings.rebuild:
        missing = {name: [option_key(o) for o in options if not table.targets[name].holds(o)]
                   for name, options in wanted.items() if name in table.targets}
        missing = {name: keys for name, keys in missing.items() if keys}
        if missing:
            log.info("latency table %s lacks options %s; it is measured again with them", path, missing)
            extra_options = {name: [*wanted[name], *_measured_options(table.targets.get(name))] for name in wanted}
            extra_ranks, table = None, None
    if table is not None and not settings.rebuild:
        table.check(targets, path)
        log.info("latency table %s (built %s in %.1f min) reused", path, table.meta.get("created"),
                 table.meta.get("build_seconds", math.nan) / 60)
        return table, path
    utterances = single_utterances(batches, settings.utterances)
    log.info("measuring the latency table (%d utterances, %d threads) ...", len(utterances), settings.threads)
    table = build_table(model, targets, utterances, frame_shift_ms,
                        machine_key(ckpt, settings, sha256, sparse_min_sparsity=threshold), settings, cache,
                        extra_ranks, extra_options)
    table.meta["checkpoint"] = str(Path(ckpt).resolve())
    table.save(path)
    log.info("latency table %s built in %.1f min", path, table.meta["build_seconds"] / 60)
    return table, path


def _measured_options(entry: TargetLatency | None) -> list[Option]:
    """The options a cached table entry was measured at beyond its default grid (its rank points and other
    options), so a rebuild with more options keeps them."""
    if entry is None:
        return []
    return [*(rank for rank, _ in entry.points), *(_parse_key(key) for key in entry.options)]


def _parse_key(key: str) -> dict:
    """The option of an :func:`compress.options.option_key` of ranks and sparsities (``r96+s0.5@4x1``)."""
    option: dict = {}
    for part in key.split("+"):
        if part.startswith("r"):
            option["rank"] = int(part[1:])
        elif part.startswith("s"):
            sparsity, _, pattern = part[1:].partition("@")
            option["sparsity"] = float(sparsity)
            option["pattern"] = pattern or "unstructured"
    return option



def stage_table(by: str, latency_cfg: Mapping, ckpt: str | Path, model: nn.Module, targets: Sequence[Target],
                batches: Callable[[], Sequence[dict]], frame_shift_ms: float, cache: SvdCache | None = None,
                extra_ranks: Mapping[str, Sequence[Option]] | None = None,
                extra_options: Mapping[str, Sequence[Option]] | None = None) -> tuple[LatencyTable | None, Path]:
    """The latency table a stage estimates or reports with, and its path.

    ``by="latency"``: :func:`ensure_table` (reused, or measured now on ``batches()``, the dev split). Any other
    ``by``: the table of this machine and checkpoint when one exists and holds ``targets`` (its
    ``speedup/latency`` is then reported beside the others), else None; nothing is measured."""
    check_by(by)
    settings = LatencySettings.from_config(latency_cfg)
    if by == "latency":
        return ensure_table(model, targets, batches(), frame_shift_ms, ckpt, settings, cache, extra_ranks,
                            extra_options)
    table, path = existing_table(settings, ckpt, sparse_min_sparsity=sparse_threshold(model))
    if table is not None:
        try:
            table.check(targets, path)
        except CostModelError as err:
            log.info("latency table not reported: %s", err)
            return None, path
        log.info("latency table %s of this machine and checkpoint: speedup/latency reported", path)
    return table, path
