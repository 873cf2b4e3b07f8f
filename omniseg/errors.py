"""The user-facing error classes: what the command line reports as one line, not a traceback.

Every error caused by the user's input (a file, a record, a config key, an argument) is a
:class:`UserError` (or an ``OSError`` naming the file). Its message names the file and, where
there is one, the record: ``<file>[:<record>]: <what>``. The CLI prints it as
``omniseg <cmd>: error: <message>`` and exits 1 (:class:`UsageError`: 2). Anything else that
escapes a command is a bug in omniseg and is reported as an internal error.

The classes that existed before this module (``BadRecordError``, ``ConfigError``,
``CheckpointError``, ...) derive from :class:`UserError` and keep their old bases, so code that
catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file (and record) or the argument; no traceback needed."""

    exit_code = 1


class UsageError(UserError):
    """A command-line argument is invalid (exit status 2, like argparse's own usage errors)."""

    exit_code = 2


class Terminated(BaseException):
    """Raised by the CLI's SIGTERM handler so that ``finally`` blocks and temp-file cleanup run.

    A ``BaseException`` like ``KeyboardInterrupt``: ``except Exception`` does not swallow it.
    """


class ArgumentValueError(UsageError, ValueError):
    """An argument does not fit the model or data it is used with (boxes for a detector, a class
    name outside a closed vocabulary): a usage error on the command line, a ValueError in the API."""
