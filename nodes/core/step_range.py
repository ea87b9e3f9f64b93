"""The rule a style's step range follows (issue 21): the Style nodes' start_percent/end_percent inputs and the
headless runner's --start/--end flags check it here, alike. No torch, no ComfyUI."""

from __future__ import annotations

import math

NODE_INPUTS = ("start_percent", "end_percent")


def check_step_range(number: int, start: float, end: float, names: tuple[str, str] = NODE_INPUTS) -> None:
    """ValueError naming the input (``names``: what the user set start and end with) unless style ``number``'s
    range is ``0 <= start <= end <= 1`` (fractions of the sampling: 0 = the first step, 1 = the last)."""
    for name, value in zip(names, (start, end)):
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
            raise ValueError(
                f"{name}: style {number} got {value}; a step range is given as fractions of the sampling "
                "between 0 (the first step) and 1 (the last)"
            )
    if float(start) > float(end):
        raise ValueError(
            f"{names[0]}: style {number} starts at {start} after it ends ({end}): set "
            f"{names[0]} <= {names[1]} (0 = the first step, 1 = the last)"
        )
