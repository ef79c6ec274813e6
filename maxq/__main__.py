"""``python -m maxq ...`` is the ``maxq`` command; ``torchrun --nproc_per_node=K -m maxq train``
runs it in K processes (DDP)."""
import sys

from maxq.cli import main

if __name__ == "__main__":
    sys.exit(main())
