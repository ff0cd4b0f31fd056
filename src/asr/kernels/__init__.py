"""The C++ inference kernels, one library built on first use: :func:`load`.

The sources are in ``csrc/`` (installed with the package):

* ``lstm_math.h`` / ``lstm_math.cpp``: the gate math (exp, sigmoid and tanh without libm calls) and
  one LSTM step, shared by the operators below;
* ``factorized_lstm.cpp``: the rank-``k`` LSTM recurrence of :mod:`asr.model.lowrank_lstm`
  (``pack``, ``forward_packed``) and the same loop on a dense kernel for speed comparisons
  (``pack_dense``, ``dense_forward``, used by ``benchmarks/measured_speedup.py``);
* ``decode_step.cpp``: the attention decoder's inference step of :mod:`asr.model.fast_decode`
  (``decode_step``, ``greedy_decode``: the whole greedy loop over it, and ``take_attention_nanoseconds``, its
  clock of the attention part), and an encoder layer's LayerNorm and max-pool in one pass (``norm_pool``);
* ``sparse_kernels.h`` / ``sparse_kernels.cpp``: pruned weights packed as sparse matrices (CSR or 4x1, 1x4,
  8x1, 1x8 blocks) and their products and LSTM recurrence, for :mod:`asr.model.sparse` (``sparse_pack``,
  ``sparse_linear``, ``sparse_lstm_forward``); the decoder step's linear chains take them too;
* ``sparse_factorized_lstm.cpp``: the rank-``k`` recurrence on pruned factors, ``V_h`` and ``U`` packed sparse
  (``sparse_factorized_lstm_forward``, for :func:`asr.model.sparse.sparse_factorized_layer_forward`).

They register the operators under ``torch.ops.shrinkml_lowrank`` (CPU float32). The hot loops are
compiled for AVX-512, AVX2 and plain x86-64 and chosen at load time on x86-64 with GCC. Building takes
about a minute (a C++ compiler and ninja are needed), then the library is cached in torch's extensions
directory, which ``TORCH_EXTENSIONS_DIR`` overrides, under a name keyed by its sources (:func:`build_name`: a
hash of the ``csrc/`` folder's path and contents, the compile flags and torch's version): every checkout on one
machine builds into a folder of its own instead of rebuilding the others' on every switch (the build files name
the sources by path, so even checkouts with the same sources would).
Callers decide what to do when it cannot be built (:func:`asr.model.lowrank_lstm.backend` falls back
to PyTorch operations).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import torch

NAME = "shrinkml_kernels"  # the library's name; its build directory is NAME_<source hash> (build_name)
CSRC = Path(__file__).with_name("csrc")
SOURCES = ("lstm_math.cpp", "factorized_lstm.cpp", "decode_step.cpp", "sparse_kernels.cpp",
           "sparse_factorized_lstm.cpp")
CFLAGS = ("-O3", "-fno-trapping-math")
NAMESPACE = "shrinkml_lowrank"  # torch.ops.<NAMESPACE>.<operator>
OPERATORS = ("pack", "forward_packed", "pack_dense", "dense_forward", "decode_step", "greedy_decode",
             "norm_pool", "take_attention_nanoseconds",
             "sparse_pack", "sparse_linear", "sparse_lstm_forward", "sparse_factorized_lstm_forward")

def source_hash(csrc: Path | None = None, cflags: tuple[str, ...] = CFLAGS) -> str:
    """12 hex digits of the SHA-256 of what the build depends on: the folder ``csrc`` (default: :data:`CSRC`) itself,
    every ``*.cpp``/``*.h`` in it by name and content, the compile flags ``cflags`` and torch's version. The folder
    counts because the build files name the sources by absolute path: two checkouts sharing one build folder, even
    with equal sources, would rebuild it each time the other one loads."""
    csrc = CSRC if csrc is None else Path(csrc)
    digest = hashlib.sha256(f"{csrc.resolve()}\0".encode())
    for path in sorted([*csrc.glob("*.cpp"), *csrc.glob("*.h")]):
        source = path.read_bytes()
        digest.update(f"{path.name}\0{len(source)}\0".encode())
        digest.update(source)
    digest.update("\0".join(["cflags", *cflags, "torch", torch.__version__]).encode())
    return digest.hexdigest()[:12]


def content_hash(csrc: Path | None = None) -> str:
    """12 hex digits of the SHA-256 of the kernels' sources alone (every ``*.cpp``/``*.h`` by name and content): what
    decoding times depend on, the same in every checkout (the key of a measured latency table)."""
    csrc = CSRC if csrc is None else Path(csrc)
    digest = hashlib.sha256()
    for path in sorted([*csrc.glob("*.cpp"), *csrc.glob("*.h")]):
        source = path.read_bytes()
        digest.update(f"{path.name}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:12]


def build_name(csrc: Path | None = None, cflags: tuple[str, ...] = CFLAGS) -> str:
    """The extension's name and build folder under torch's extensions directory: ``NAME_<source_hash>``."""
    return f"{NAME}_{source_hash(csrc, cflags)}"


_lock = threading.Lock()
_loaded = False


def load() -> None:
    """Build the library (or load the cached build) and register its operators, once per process.

    Raises ``RuntimeError`` naming the cause when there is no C++ compiler, the build fails or an
    operator is missing, and ``FileNotFoundError`` when a source file is not installed.
    """
    global _loaded
    with _lock:
        if _loaded:
            return
        missing = [name for name in SOURCES if not (CSRC / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{CSRC}: kernel sources {', '.join(missing)} missing; reinstall shrinkml "
                                    "(pyproject.toml package-data ships asr/kernels/csrc/*.cpp and *.h)")
        from torch.utils.cpp_extension import get_cxx_compiler
        from torch.utils.cpp_extension import load as load_extension

        compiler = get_cxx_compiler()  # $CXX, else c++
        if shutil.which(compiler.split()[0] if compiler.strip() else "c++") is None:
            raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX, or install one: apt-get install g++)")

        load_extension(build_name(CSRC, CFLAGS), [str(CSRC / name) for name in SOURCES], extra_cflags=list(CFLAGS),
                       is_python_module=False)
        library = getattr(torch.ops, NAMESPACE)
        absent = [op for op in OPERATORS if not hasattr(library, op)]
        if absent:
            raise RuntimeError(f"{NAME}: operators {', '.join(absent)} not registered under torch.ops.{NAMESPACE}")
        _loaded = True


def library_path() -> Path:
    """The built library's file (after :func:`load`): a shared library that registers the operators when loaded
    with ``torch.ops.load_library``, in any process with the same torch version, without this package."""
    from torch.utils.cpp_extension import _get_build_directory

    load()
    name = build_name(CSRC, CFLAGS)
    return Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
