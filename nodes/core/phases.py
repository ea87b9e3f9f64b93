"""Which styles act where at each sampling step: styles in space (masks) and in time (step ranges). Pure torch.

At step ``s`` the *active* styles are those whose range holds the step; they are fused in painter's order (a later
style wins where masks overlap, paper Sec. 3.3). A style that was active at an earlier step and no longer is has
*ended*: with the exact background its region goes on with the base branch (base model, base prompt) wherever no
active style covers it, instead of snapping back to the content. Regions no style has touched yet keep the exact
background (the inversion's trajectory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import fuse, fusion_weights, inside_region


@dataclass
class Phase:
    """The fusion of one set of active (and ended) styles. Weights are ``[B,1,h,w]`` and sum to 1 everywhere:
    ``sum(weights) + base + content``."""

    styles: tuple[int, ...]  # active styles, painter's order
    weights: list[torch.Tensor]  # per active style
    base: torch.Tensor | None  # the base branch's weight (None: no base branch at this step)
    content: torch.Tensor | None  # the content's weight (exact background; None: model background)
    inside: torch.Tensor  # bool: where the latent follows the sampler; elsewhere it is the trajectory's

    def to(self, device, dtype) -> Phase:
        def cast(t):
            return None if t is None else t.to(device, dtype)

        return Phase(
            self.styles,
            [w.to(device, dtype) for w in self.weights],
            cast(self.base),
            cast(self.content),
            self.inside.to(device),
        )


def step_styles(bounds: dict[int, tuple[float, float]], sigmas: list[float]) -> list[tuple[int, ...]]:
    """The styles active at each step: ComfyUI's rule for a timestep range (ConditioningSetTimestepRange), active
    where ``sigma_end <= sigma <= sigma_start``; ``bounds``: style -> (sigma_start, sigma_end), in painter's order;
    ``sigmas``: the schedule (the last, final sigma excluded from the steps)."""
    return [tuple(i for i, (hi, lo) in bounds.items() if lo <= sig <= hi) for sig in sigmas[:-1]]


class StylePhases:
    """The phases of one run: ``masks`` style -> latent mask ``[B,1,h,w]`` (the styles that run, painter's order),
    ``steps`` the active styles per step, ``exact`` the background rule."""

    def __init__(self, masks: dict[int, torch.Tensor], steps: list[tuple[int, ...]], exact: bool, shape):
        self.masks = masks
        self.steps = steps
        self.exact = exact
        self.shape = tuple(shape)  # (B, 1, h, w)
        self._cache: dict = {}
        self.ended: list[tuple[int, ...]] = []  # per step: the styles that have ended (exact background only)
        seen: set[int] = set()
        for styles in steps:
            self.ended.append(tuple(i for i in masks if i in seen and i not in styles) if exact else ())
            seen.update(styles)

    def at(self, step: int) -> Phase:
        """The phase of step ``step`` (every style, none ended, outside the schedule)."""
        if 0 <= step < len(self.steps):
            return self.phase(self.steps[step], self.ended[step])
        return self.phase(tuple(self.masks), ())

    def phase(self, styles: tuple[int, ...], ended: tuple[int, ...] = ()) -> Phase:
        key = (styles, ended)
        if key not in self._cache:
            masks = [self.masks[i] for i in styles]
            if masks:
                weights, background = fusion_weights(masks)
            else:
                weights, background = [], torch.ones(self.shape)
            if not self.exact:
                base, content = background, None
            elif ended:
                touched = 1.0 - torch.stack([1.0 - self.masks[i] for i in ended]).prod(0)  # soft union
                base, content = background * touched, background * (1.0 - touched)
                if not bool((base > 0).any()):  # every ended region is covered by an active style
                    base, content = None, background
            else:
                base, content = None, background
            touched = masks + [self.masks[i] for i in ended]
            inside = inside_region(touched) if touched else torch.zeros(self.shape, dtype=torch.bool)
            self._cache[key] = Phase(styles, weights, base, content, inside)
        return self._cache[key]

    def needs_base(self, step: int) -> bool:
        """Does the base branch run at ``step``: always with the model background, where an ended style's region
        is not covered by an active one with the exact background."""
        return self.at(step).base is not None

    def any_base(self) -> bool:
        return any(self.needs_base(s) for s in range(len(self.steps)))

    def final_inside(self) -> torch.Tensor:
        """Where the run's last latent is the sampler's (every style that was active at any step)."""
        return self.at(len(self.steps) - 1).inside if self.steps else self.phase(()).inside


def fuse_phase(phase: Phase, preds: dict[int, torch.Tensor], base, content) -> torch.Tensor:
    """One prediction (cond or uncond) fused by the phase's weights: ``sum_i w_i * preds[i]`` over the active styles,
    plus the base branch's prediction ``base`` and the content ``content`` where the phase gives them weight."""
    ps = [preds[i] for i in phase.styles]
    ws = list(phase.weights)
    if phase.base is not None:
        if phase.content is None:  # the model background
            return fuse(ps, ws, base, phase.base)
        ps.append(base)
        ws.append(phase.base)
    return fuse(ps, ws, content, phase.content)
