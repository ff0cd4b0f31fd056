"""The wrapper of every command-line entry point: a known error becomes one line on stderr and exit status 2.

Known errors are :class:`~common.errors.KnownError` (data, scheme, checkpoint, stale-search errors, ...),
``FileNotFoundError``, Hydra's composition and override errors, OmegaConf's config errors (a missing
key or value, an interpolation that does not resolve) and the classes an entry point adds; anything
else keeps its traceback. A Hydra entry point names its config here instead of in ``hydra.main``::

    @cli_main("search", SearchSpaceError, config_path="conf", config_name="search")
    def main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        sys.exit(main())

The decorated function returns the exit status: its own integer result, 0 for ``None``, 2 for a known
error (``hydra.main`` drops a task's result: a Hydra task ends with another status by ``sys.exit``).
Under Hydra a known error of the task is caught inside the task (Hydra would print a line of its own
before re-raising it), and ``HYDRA_FULL_ERROR=1`` while the entry point runs, so that Hydra raises its
composition errors to the wrapper instead of printing them with exit status 1.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable

from common.errors import KnownError

EXIT_KNOWN_ERROR = 2
_TRACEBACK = "Traceback (most recent call last):"


class _Reported(BaseException):
    """A known error on its way out of a Hydra task: not an ``Exception``, so Hydra lets it pass."""


def cli_main(name: str, *known: type[BaseException], config_path: str | None = None,
             config_name: str | None = None) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate entry point ``main`` of command ``name``; ``known``: further error classes it reports as one
    line. With ``config_name``, ``main(cfg)`` is a Hydra task of ``hydra.main(config_path, config_name)``
    (``config_path`` relative to ``main``'s file, as in ``hydra.main``)."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        if config_name is None:
            return _reporting(name, known, main, under_hydra=False)
        import hydra

        @functools.wraps(main)  # hydra.main finds the entry point's file (and config_path) through __wrapped__
        def task(cfg):
            try:
                return main(cfg)
            except Exception as err:
                message = known_message(err, known)
                if message is None:
                    raise
                raise _Reported(message) from err

        return _reporting(name, known, hydra.main(config_path=config_path, config_name=config_name,
                                                  version_base="1.3")(task), under_hydra=True)

    return decorate


def _reporting(name: str, known: tuple[type[BaseException], ...], main: Callable[..., int | None],
               under_hydra: bool) -> Callable[..., int]:
    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        previous = os.environ.get("HYDRA_FULL_ERROR")
        if under_hydra:  # Hydra then raises its errors to us instead of printing them
            os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            status = main(*args, **kwargs)
        except _Reported as reported:
            message = str(reported)
        except Exception as err:
            message = known_message(err, known)
            if message is None:
                raise
        else:
            return status if isinstance(status, int) else 0
        finally:
            if under_hydra and previous is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            elif under_hydra:
                os.environ["HYDRA_FULL_ERROR"] = previous
        print(f"{name}: {message}", file=sys.stderr, flush=True)
        return EXIT_KNOWN_ERROR

    return run


def known_message(err: BaseException, known: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one-line report of ``err`` if it is a known error, else None."""
    if isinstance(err, KnownError | FileNotFoundError) or (known and isinstance(err, known)):
        return _own_message(str(err))
    if "hydra" in sys.modules:
        from hydra.errors import CompactHydraException, InstantiationException

        if isinstance(err, InstantiationException):  # an error raised while building a config's _target_
            if err.__cause__ is None:
                return "config: " + one_line(str(err))
            return known_message(err.__cause__, known)
        if isinstance(err, CompactHydraException):  # composition: a bad override, config group option, ...
            cause = err.__cause__
            detail = f" ({str(cause).splitlines()[0]})" if cause is not None and str(cause) else ""
            return "config: " + one_line(str(err)) + detail
    if "omegaconf" in sys.modules:
        from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

        if isinstance(err, OmegaConfBaseException):
            key = getattr(err, "full_key", None)
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            where = f" (key {key})" if key and f"'{key}'" not in text and f": {key}" not in text else ""
            fix = (f"give it a value, e.g. on the command line: {key}=..." if isinstance(err, MissingMandatoryValue)
                   else "check the key and the overrides against the configs under conf/")
            return f"config: {text}{where}; {fix}"
    return None


def _own_message(text: str) -> str:
    """A known error's message in one line; for an error re-raised from a DataLoader worker (whose
    message carries the worker's traceback), the original error's message."""
    if _TRACEBACK in text:
        last = text.rstrip().splitlines()[-1].strip()
        return re.sub(r"^[\w.]+: ", "", last)
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` on one line: lines joined by "; " (by " " after a full stop), and the items after a line
    ending in ":" by ", " (Hydra's list of a config group's options). OmegaConf's ``object_type=`` lines
    and Hydra's config search path are left out."""
    out, listing = "", False
    for line in (raw.strip() for raw in text.split("Config search path:")[0].splitlines()):
        if not line or line.startswith("object_type="):
            continue
        if not out:
            out = line
        elif out.endswith(":"):
            out, listing = f"{out} {line}", True
        else:
            out += ", " if listing else " " if out.endswith(".") else "; "
            out += line
    return out
