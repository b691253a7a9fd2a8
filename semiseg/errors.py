"""User-facing errors.

Every problem a user can fix (bad path, bad file, bad config key, impossible split) is raised as a
``SemisegError`` whose message names the file or key and says what to do. The CLI prints the message
alone, without a traceback; library callers can catch the one type.
"""


class SemisegError(Exception):
    """A problem in the user's input, with a message that names it and says how to fix it."""


class DataError(SemisegError):
    """A dataset, case file or label that cannot be used as it is."""


class ConfigError(SemisegError):
    """A configuration key or value that is unknown or impossible."""
