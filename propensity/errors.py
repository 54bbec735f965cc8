"""Errors users can act on: one sentence saying what is wrong and what to do."""


class PropensityError(Exception):
    """A problem with the user's input or state; the CLI prints it as one line and exits non-zero."""


def shown(value: object, limit: int = 60) -> str:
    """A value from the user's data as a one-line message shows it: quoted, escaped and short."""
    if value is None:
        return "empty"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"
