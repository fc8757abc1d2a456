"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class BenchError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class ConfigError(BenchError):
    """A configuration value is missing, malformed or out of range.

    The message names where the value came from (a file, a CLI option), the field,
    and what was expected.
    """

    def __init__(self, field: str, expected: str, got: object = None, *, source: str | None = None):
        self.field = field
        self.expected = expected
        self.got = got
        self.source = source
        where = f"{source}: " if source else ""
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{where}{field}: expected {expected}{got_text}")


class StorageError(BenchError):
    """The result storage cannot be opened or written."""
