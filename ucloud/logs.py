"""The one logging setup every daemon calls at start."""

from __future__ import annotations

import logging
import sys


def setup_logging(daemon: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {daemon}[%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and urllib3 are chatty at INFO about things an operator cannot act on.
    for noisy in ("urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"ucloud.{daemon}")
