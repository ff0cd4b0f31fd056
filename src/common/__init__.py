"""Foundation of every shrinkml package: atomic writes of result files (:mod:`common.atomic`), the error
an entry point reports as one line (:mod:`common.errors`) and the wrapper of every command-line entry point
(:mod:`common.cli`).

``asr``, ``compress``, ``rl`` and ``shrinkml`` may import it; it imports none of them.
"""
