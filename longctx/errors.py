"""The one error type users see: a one-line message, exit code 2, no traceback."""


class UsageError(Exception):
    """Bad input the user can fix. The CLI prints `longctx: error: <message>` and exits with 2."""


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)
