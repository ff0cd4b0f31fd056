"""The error every data problem raises: it names the file or config key and the fix."""


class DataError(ValueError):
    """A corpus, audio file, transcript or data config that cannot be used as it is."""
