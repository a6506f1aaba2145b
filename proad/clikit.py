"""What every proad command-line tool does the same way: map failures to exit codes.

Expected failures (bad input, a failed check, a missing TensorRT) print one line, ``prog: message``,
and return their exit code; anything else is a bug or an environment problem: its traceback is
printed and the exit code is 1. Ctrl-C is 130.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: (exception type, exit code, how to say it in one line)
Failure = tuple[type[BaseException], int, Callable[[BaseException], str]]


def say(prefix: str) -> Callable[[BaseException], str]:
    return lambda exc: f"{prefix}{exc}"


def run_command(prog: str, body: Callable[[Any], int], args: Any, failures: Sequence[Failure]) -> int:
    try:
        return body(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        for kind, code, render in failures:
            if isinstance(exc, kind):
                print(f"{prog}: {render(exc)}", file=sys.stderr)
                return code
        traceback.print_exc()
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
