"""The package's logger, and console output from the main process only.

    from elmo_dist.runtime.logs import log, setup_logging
    setup_logging(is_main=accelerator.is_main_process)
    log.info("step %d", step)
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("elmo_dist")


def setup_logging(is_main: bool) -> None:
    """Console output from the main process only; other ranks log warnings and worse."""
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)
