"""The base of every error whose message is the whole report."""


class KnownError(Exception):
    """An error whose message names the file or config key at fault and the fix, in one line.

    Entry points wrapped by :func:`common.cli.cli_main` print it on stderr, without a traceback, and exit
    with status 2. Subclasses keep their usual base as well: ``class DataError(KnownError, ValueError)``.
    """
