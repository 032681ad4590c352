"""What the command-line tools share: one-line errors, and tracebacks only at --log-level debug.

Every user mistake ends in `<prog>: error: <what and how to fix>` on stderr and a non-zero exit
(2 for bad arguments, as argparse does; 1 for everything found later). A failure that is not a
user mistake is reported the same way, naming its type, with the traceback under
`--log-level debug`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from elf_core.manifest import MODEL_NAME_PATTERN

LOG_LEVELS = ("debug", "info", "warning", "error")


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: no usage block before `<prog>: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_log_level(parser: argparse._ActionsContainer, default: str = "info") -> None:
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default,
        help=f"logging level; debug also prints the traceback of an error (default {default})",
    )


def fraction(text: str) -> float:
    """A number in [0, 1]: a tolerance or an agreement floor (0.005 = half a point)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1] (a fraction: 0.005 = 0.5 points), got {text}"
        )
    return value


def model_name(text: str) -> str:
    """--name of a model directory: what the server serves it as."""
    if not re.fullmatch(MODEL_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_', '-' only")
    return text


def renamed(parser: argparse._ActionsContainer, old: str, new: str) -> None:
    """`old`, hidden from --help, fails at once with a pointer to `new`: no silent alias."""

    class _Renamed(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[Any] | None,
            option_string: str | None = None,
        ) -> None:
            parser.error(f"{old} is now {new}")

    parser.add_argument(old, nargs="?", action=_Renamed, help=argparse.SUPPRESS)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def run_reporting_errors(
    prog: str,
    work: Callable[[], int],
    user_errors: tuple[type[BaseException], ...],
    debug: bool,
) -> int:
    """work(), with every exception turned into one line on stderr (and exit status 1).
    KeyboardInterrupt is no mistake and goes through (a resumable run keeps its checkpoint)."""
    try:
        return work()
    except user_errors as exc:
        failure: BaseException = exc
        message = one_line(exc)
    except Exception as exc:
        failure = exc
        message = (
            f"unexpected {type(exc).__name__}: {one_line(exc)} (rerun with --log-level debug "
            "for the traceback)"
        )
    if debug:
        traceback.print_exception(failure)
    logging.shutdown()
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 1
