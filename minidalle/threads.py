"""`--threads N`: the CPU threads torch uses, set before any work.

On a machine another process keeps busy, fewer threads can be much faster: the threads of one
operation wait for each other, and one that is descheduled holds up the rest (measured on a
2-core machine with another process running: a tokenizer step 0.27 s at 1 thread, 1.3-7 s at 2).
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_threads(threads: int) -> str:
    """Run torch's intra-op and inter-op work on `threads` threads (0: leave torch's setting);
    returns a line saying the count, for the log."""
    import torch

    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # settable once per process, before any inter-op work: a second run in one process
            pass
    n = torch.get_num_threads()
    source = f"--threads {threads}" if threads else "torch's default; set it with --threads"
    return f"{n} CPU thread{'s' if n != 1 else ''} ({source}; {available_cores()} cores available to this process)"
