"""What every tool shares: user errors become one line on stderr and exit status 2."""

import sys
from typing import Callable

from mdistiller.errors import TrainingStopped, UserError


def run_tool(main: Callable[[], object]) -> None:
    """Run `main()`; a UserError prints `error: <message>` and exits 2, without a traceback.

    A run stopped by SIGINT / SIGTERM (:class:`TrainingStopped`) prints how to resume and exits with
    128 + the signal number, as a process killed by that signal would.
    """
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
