"""`run_cli(main, argv)`: how every command of ours turns key=value arguments into a run and an exit status.

    if __name__ == "__main__":
        sys.exit(run_cli(main))

It parses `argv` with chz into the config `main` takes (as `chz.nested_entrypoint` does) and calls
`main(config)`. What it prints and returns:

- `--help`: the options with their docs on stdout, status 0;
- a mistake of the user (an unknown or badly typed option, a value a config validator refuses, or a
  `UserError` raised by the run: a missing file, a log directory in use, a full disk): one
  `error: ...` line on stderr, status 2, no traceback;
- a run stopped by Ctrl-C or SIGTERM (`main` raises or returns `RunStopped`, or a second Ctrl-C
  raises KeyboardInterrupt): status 130, as a shell reports an interrupted program;
- anything else is a bug of ours: the exception propagates with its traceback (status 1).

`COOKBOOK_DEBUG=1` prints the traceback of user errors too. chz's own `nested_entrypoint` prints
its errors over several lines and exits with status 1, and a validator's ValueError escapes it as a
traceback, so this module calls chz's Blueprint directly instead.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import chz
from chz.blueprint import EntrypointHelpException
from chz.blueprint._entrypoint import EntrypointException

from cookbook.errors import RunStopped, UserError

DEBUG_VARIABLE = "COOKBOOK_DEBUG"
EXIT_USER_ERROR = 2
EXIT_STOPPED = 130  # 128 + SIGINT


def run_cli(main: Callable[[Any], Any], argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) into `main`'s config, run it; the process exit status.

    A `main` that returns an int (the eval command) chooses the status itself."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = chz.Blueprint(chz.get_nested_target(main)).make_from_argv(argv)
    except EntrypointHelpException as help_text:
        print(str(help_text).rstrip("\n"))
        return 0
    # A ValueError while the config is built comes from a field validator: the value is the user's.
    except (EntrypointException, UserError, ValueError) as error:
        return _report_user_error(error)
    try:
        result = main(config)
    except UserError as error:
        return _report_user_error(error)
    except RunStopped:
        return EXIT_STOPPED
    except KeyboardInterrupt:
        if _debug():
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    if isinstance(result, RunStopped):
        return EXIT_STOPPED
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return 0


def one_line(message: str) -> str:
    """A possibly multi-line message (chz writes several) as one line."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text += (" " if text.endswith((".", ":", ";", "!", "?")) else "; ") + part
    return text


def _report_user_error(error: BaseException) -> int:
    if _debug():
        traceback.print_exception(error)
    message = _tidy_chz_message(str(error)) if isinstance(error, EntrypointException) else str(error)
    print(f"error: {one_line(message) or type(error).__name__}", file=sys.stderr)
    return EXIT_USER_ERROR


_UNINTERPRETED = re.compile(
    r"Could not interpret argument '?(?P<value>.*?)'? provided for param '(?P<param>[^']+)'\.\.\.\s*"
    r"- Failed to interpret it as a value:\s*(?P<as_value>.*?)\s*"
    r"- Failed to interpret it as a factory for polymorphic construction:\s*(?P<as_factory>.*)",
    re.DOTALL,
)


def _tidy_chz_message(message: str) -> str:
    """chz's argument errors, shortened to `param=value: reason`."""
    message = re.sub(r" to Blueprint for \S+( \(from command line\))?", "", message)
    match = _UNINTERPRETED.fullmatch(message.strip())
    if match is None:
        return message
    # For a plain value (a number, a Literal) the cast says what is wrong; for a polymorphic field
    # (dataset=) the factory's own error does, unless chz merely found no such subclass.
    reason = match["as_value"]
    if not match["as_factory"].startswith(("No subclass of", "Could not produce a")):
        reason = match["as_factory"]
    prefix = f"{match['param']}={match['value']}"
    return reason if reason.startswith(prefix) else f"{prefix}: {reason}"


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
