"""The one exception type for a mistake the user can fix; the scripts print it as one line, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing stage output); printed without a traceback."""
