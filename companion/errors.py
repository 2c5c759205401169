"""The one exception type users see: a clear one-line message, exit code 2 on the command line."""


class CompanionError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
