"""Compression techniques behind one interface (:class:`compress.techniques.base.Technique`), registered by name.

Importing the package registers the built-in ones, in application order: ``lowrank`` (key ``rank``), ``prune``
(``sparsity``, ``pattern``), ``quantize`` (``bits``). A new technique is one module that subclasses
:class:`~compress.techniques.base.Technique` and calls :func:`~compress.techniques.base.register`
(docs/architecture.md, "Adding a technique").
"""

from compress.techniques import lowrank, prune, quantize  # noqa: F401  (registers them, in this order)
from compress.techniques.base import TECHNIQUES, SchemeError, Technique, owner, register, technique, unregister

__all__ = ["TECHNIQUES", "SchemeError", "Technique", "owner", "register", "technique", "unregister"]
