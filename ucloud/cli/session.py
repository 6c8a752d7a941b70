"""What every command handler gets: the API client, where to print, and its arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ucloud.cli.config import ClientConfig
from ucloud.cli.http import API
from ucloud.cli.output import Output


@dataclass
class Session:
    config: ClientConfig
    api: API
    out: Output


Handler = Callable[[Session, argparse.Namespace], int]
