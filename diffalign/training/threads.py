"""How many torch CPU threads a training process uses (``--num-threads``).

Processes that share a CPU each running torch's default (one thread per core) oversubscribe it: on a
2-core machine, two such processes ran about 10x slower than with one thread each. So with several
processes on one machine and no ``--num-threads``, each takes its share of the cores; a single
process keeps torch's setting (all cores, or what ``OMP_NUM_THREADS`` / the caller set).
"""

from __future__ import annotations

import os
from typing import Optional

import torch


def configure_threads(requested: Optional[int], local_processes: int) -> int:
    """Set and return the thread count: ``requested``, else the cores shared among ``local_processes``."""
    if requested is not None:
        torch.set_num_threads(requested)
    elif local_processes > 1:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // local_processes)))
    return torch.get_num_threads()
