"""Run ``torch.profiler`` without its USDT start/stop lines on stderr.

Kineto (torch 2.13) writes ``USDT: ... profiler_start`` / ``profiler_stop`` to
file descriptor 2 from C++ each time a profile starts or stops. The memory
measurement profiles one step per subset, so a benchmark printed dozens of
them over its progress bars. This context manager sends fd 2 to a temporary
file for the duration of the block and then writes back every line that is
not such a marker, so a real error from the same window still reaches stderr.
It redirects the whole process's fd 2 for those milliseconds.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_MARKER = re.compile(rb"^USDT:.*\] profiler_(start|stop)\s*$")


@contextmanager
def quiet_profiler_markers() -> Iterator[None]:
    fd = 2  # kineto writes to the descriptor, whatever sys.stderr is bound to
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all (a daemon): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [
                line for line in sink.read().splitlines(keepends=True) if not _MARKER.match(line)
            ]
            if kept:
                os.write(fd, b"".join(kept))
