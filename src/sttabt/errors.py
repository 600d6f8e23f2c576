"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class SttabtError(Exception):
    """A problem with the user's input (model, data, options, checkpoint), explained in the message."""
