"""Argument types shared by the bench scripts: a bad value is argparse's one-line error and
exit 2 (as `trainserve` answers a bad setting), not a traceback or a silently empty table.

Imported as ``arguments`` (the scripts run as ``python bench/<name>.py``, with bench/ on the
path).
"""

from __future__ import annotations

import argparse
import re

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def positive_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma list of integers of at least 1: "1,8,32"."""
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma list of integers, got nothing")
    return values


def choices_list(*allowed: str):
    """A type: a comma list, each item one of ``allowed``."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {', '.join(allowed)}, got {text!r}"
            )
        return values

    return parse


def torch_device(text: str) -> str:
    """cpu, cuda or cuda:N, present on this machine."""
    device = text.strip().lower()
    if not DEVICE.fullmatch(device):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(device.partition(":")[2] or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text}: torch sees {count} CUDA device(s) here")
    return device


def _parse(kind: type, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
