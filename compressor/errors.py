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
