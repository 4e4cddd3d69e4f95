"""``policyc proxy`` with cProfile switched on by SIGUSR1 and off (and saved) by SIGUSR2.

So the profile covers only the steady state the harness chooses (after imports, token
verification of the first login and warm caches), not start-up.  Usage:
``python bench/profiled_proxy.py OUT.prof proxy POLICY --listen ...`` (policyc's own args).
cProfile records the thread that enables it: the handler runs in the main thread, which is
the proxy's event loop.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

from policyc.cli import main

_profilers: list[cProfile.Profile] = []


def _start(_signum: int, _frame: FrameType | None) -> None:
    _profilers.append(cProfile.Profile())  # a fresh profile for every window
    _profilers[-1].enable()


def _stop(_signum: int, _frame: FrameType | None) -> None:
    if _profilers:
        _profilers[-1].disable()
        partial = sys.argv[1] + ".partial"  # the harness waits for the final name
        _profilers[-1].dump_stats(partial)
        os.replace(partial, sys.argv[1])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.exit(main(sys.argv[2:]))
