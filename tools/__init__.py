"""Developer tools (not installed): benchmarks, checks and GPU-session helpers, each run as ``python -m tools.NAME``.

:func:`run_tool` is their ``if __name__ == "__main__":`` entry.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


def tool_name() -> str:
    """The running tool as its user named it: 'overlap_tradeoff' for ``python -m tools.overlap_tradeoff``,
    'trt_layer.drive' for ``-m tools.trt_layer.drive``, the file's stem for ``python tools/x.py``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec is not None else os.path.splitext(os.path.basename(sys.argv[0]))[0]
    return name.removeprefix("tools.")


def level_255(text: str) -> float:
    """argparse type: a noise std on the 0-255 scale, from 0 (a clean photo, as docs/evaluation.md runs
    guard_noise) to 255 (a negative level ran and printed a table; found after the model had loaded, or not at
    all)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"expected a noise std on the 0-255 scale, from 0 to 255 (e.g. 25), got "
                                         f"{text!r}")
    return abs(value)  # -0 is 0


def run_tool(main: Callable[[], int | None], name: str | None = None) -> NoReturn:
    """Run a tool's ``main`` and exit with its code. The toolkit's own errors (a ToolkitError: an unknown photo, a
    missing weights file, a refused option) are the user's to fix and end in one line, ``NAME: error: MESSAGE``,
    and exit code 2, as ``moe-denoise`` shows them (they read as a crash, a traceback ending in the message), as do
    a path's permissions, length and links (:func:`moe_base.errors.path_error_message`); any other exception is a
    bug and keeps its traceback."""
    from moe_base.errors import ToolkitError, path_error_message

    try:
        code = main()
    except (ToolkitError, OSError) as e:
        message = str(e) if isinstance(e, ToolkitError) else path_error_message(e)  # a path's permissions, length or
        if message is None:  # links are the user's to fix too
            raise
        print(f"{name or tool_name()}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)
