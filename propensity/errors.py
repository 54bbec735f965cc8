"""Errors users can act on: one sentence saying what is wrong and what to do."""


class PropensityError(Exception):
    """A problem with the user's input or state; the CLI prints it as one line and exits non-zero."""
