"""Command-line plumbing shared by the numbered scripts: presets, devices, clean user errors."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from common.errors import UserError

PRESETS = ("smoke", "quick", "full")


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main(): user errors become one clear line and exit code 2, Ctrl-C exits 130."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def default_preset() -> str:
    """`full` where CUDA is available, else `quick`."""
    import torch

    return "full" if torch.cuda.is_available() else "quick"


def apply_preset(args: argparse.Namespace, presets: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """Fill every flag the user left at None with the chosen preset's value.

    Flags that presets control are declared with default=None, so an explicit flag always wins.
    """
    if args.preset is None:
        args.preset = default_preset()
    for key, value in presets[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def refuse_to_replace(path: Path, resume: bool, fresh: bool, can_resume: bool = True) -> None:
    """Replace a trained run only when asked: a forgotten flag must not cost the hour it took to train."""
    if resume and fresh:
        raise UserError("choose one of --resume and --fresh")
    if path.exists() and not resume and not fresh:
        how = "continue it with --resume, or start over with --fresh" if can_resume else "replace it with --fresh"
        raise UserError(f"{path} holds a trained run: {how}")


def add_preset_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="budget preset: smoke (tests, ~1 min), quick (2-core CPU), full (GPU); "
                             "default full with CUDA, else quick")


def pick_device(name: str | None = None):
    """CUDA -> MPS -> CPU unless `name` is given; an unavailable device is a UserError."""
    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps requested but MPS is not available")
    return device


def set_threads(num_threads: int | None = None) -> int:
    """Use every core for intra-op work (torch defaults can be off on shared machines)."""
    import torch

    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _checked(kind: Callable[[str], Any], test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _checked(float, lambda v: v > 0, "a positive number")
non_negative_float = _checked(float, lambda v: v >= 0, "a non-negative number")
probability = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")
