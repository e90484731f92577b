"""What every tool shares: user errors become one line on stderr and exit status 2."""

import sys
from typing import Callable

from mdistiller.errors import UserError


def run_tool(main: Callable[[], object]) -> None:
    """Run `main()`; a UserError prints `error: <message>` and exits 2, without a traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
