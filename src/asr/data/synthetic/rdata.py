"""Read R lazy-load databases (``Rdata.rdb`` / ``Rdata.rdx``) with the standard library only.

R packages store their data sets as a lazy-load database: ``Rdata.rdx`` is a gzip'ed R
serialization of an index ``list(variables=list(name=c(offset, length)), ...)`` and
``Rdata.rdb`` holds, at each offset, a 4-byte big-endian length followed by a zlib
stream of one serialized object. This module implements the subset of R's XDR
serialization format (versions 2 and 3) that plain data uses: NULL, symbols, pairlists,
logical/integer/double/character vectors and generic lists, with attributes.

It exists so that public-domain text shipped in Debian's ``r-cran-*`` data packages can be
read without installing R.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

_NILSXP, _SYMSXP, _LISTSXP = 0, 1, 2
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 9, 10, 13, 14, 16, 19
_REFSXP, _NILVALUE_SXP, _GLOBALENV_SXP, _EMPTYENV_SXP = 255, 254, 253, 242
_BASEENV_SXP, _MISSINGARG_SXP, _BASENAMESPACE_SXP = 241, 251, 247
_NA_INT = -(2**31)


class RDataError(ValueError):
    """The bytes are not an R serialization this reader understands."""


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _bytes(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def header(self) -> None:
        if self._bytes(2) != b"X\n":
            raise RDataError("only the XDR (binary, big-endian) R serialization format is supported")
        version = self._int()
        self._int()  # R version that wrote it
        self._int()  # minimal R version to read it
        if version == 3:
            self._bytes(self._int())  # native encoding name
        elif version != 2:
            raise RDataError(f"unsupported R serialization version {version}")

    def item(self) -> Any:
        flags = self._int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind in (_NILVALUE_SXP, _GLOBALENV_SXP, _EMPTYENV_SXP, _BASEENV_SXP,
                    _MISSINGARG_SXP, _BASENAMESPACE_SXP, _NILSXP):
            return None
        if kind == _REFSXP:
            index = flags >> 8
            return self.refs[(index if index else self._int()) - 1]
        if kind == _SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _LISTSXP:
            attrs = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            head = self.item()
            tail = self.item()
            del attrs
            pairs = [(tag, head)]
            if isinstance(tail, _PairList):
                pairs.extend(tail.pairs)
            return _PairList(pairs)
        if kind == _CHARSXP:
            length = self._int()
            return None if length == -1 else self._bytes(length).decode("utf-8", errors="replace")
        if kind in (_LGLSXP, _INTSXP):
            n = self._int()
            values = [None if v == _NA_INT else v for v in struct.unpack_from(f">{n}i", self.data, self.pos)]
            self.pos += 4 * n
            value: Any = values
        elif kind == _REALSXP:
            n = self._int()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (_STRSXP, _VECSXP):
            n = self._int()
            value = [self.item() for _ in range(n)]
        else:
            raise RDataError(f"unsupported R object type {kind} at byte {self.pos - 4}")
        if has_attr:
            attrs = self.item()
            names = dict(attrs.pairs).get("names") if isinstance(attrs, _PairList) else None
            if names is not None and kind == _VECSXP:
                return dict(zip(names, value, strict=True))
        return value


class _PairList:
    def __init__(self, pairs: list[tuple[Any, Any]]):
        self.pairs = pairs


def unserialize(data: bytes) -> Any:
    """Decode one R object from its XDR serialization; named lists become ``dict``."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_lazyload_db(rdx_path: str | Path) -> dict[str, Any]:
    """Read every variable of an R lazy-load database given the path of its ``.rdx`` index.

    Returns a mapping from variable name to its value (character vectors become lists of
    ``str``, with ``None`` for ``NA``).
    """
    rdx_path = Path(rdx_path)
    rdb_path = rdx_path.with_suffix(".rdb")
    try:
        index = unserialize(gzip.decompress(rdx_path.read_bytes()))
        blob = rdb_path.read_bytes()
    except (OSError, zlib.error, struct.error) as err:
        raise RDataError(f"cannot read R lazy-load database {rdx_path}: {err}") from err
    out: dict[str, Any] = {}
    for name, (offset, length) in index["variables"].items():
        offset, length = int(offset), int(length)
        chunk = blob[offset : offset + length]
        (raw_len,) = struct.unpack(">i", chunk[:4])
        data = zlib.decompress(chunk[4:])
        if len(data) != raw_len:
            raise RDataError(f"{rdb_path}: variable {name!r} decompressed to {len(data)} bytes, expected {raw_len}")
        out[name] = unserialize(data)
    return out
