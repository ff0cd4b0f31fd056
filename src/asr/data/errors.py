"""The error every data problem raises: it names the file or config key and the fix."""

from common.errors import KnownError


class DataError(KnownError, ValueError):
    """A corpus, audio file, transcript or data config that cannot be used as it is."""
