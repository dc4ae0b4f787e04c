"""User-facing errors.

A `CompressError` is a problem with the user's input or environment (missing file, bad config,
unsupported op, missing toolchain). The CLI prints its message as one line and exits with
`exit_code` (2), without a traceback unless `--debug` is given. Anything else is a bug.
"""


class CompressError(Exception):
    exit_code = 2


class VerificationError(CompressError):
    """The engine was built but does not match the model within tolerance: exit 3."""

    exit_code = 3


class Interrupted(CompressError):
    """The user stopped the run (Ctrl-C, SIGINT): exit 130, as shells report a SIGINT'd command.
    The report says which pass was stopped; `--resume` continues from the finished passes."""

    exit_code = 130


def first_line(e: BaseException, limit: int = 300, typed: bool = False) -> str:
    """An exception's message cut to its first line (its type's name when it has none): what a
    one-line error quotes from a library's multi-line one. `typed`: "TypeName: message"."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return (f"{type(e).__name__}: " if typed else "") + text.splitlines()[0][:limit]
