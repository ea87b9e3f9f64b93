"""Refusing prompts that cover part of the latent (what the content injection cannot follow)."""

from __future__ import annotations


def check_areas(original_conds: dict, styles: list, hw: tuple[int, int]) -> None:
    """Refuse prompts that cover part of the latent (an area, or a mask with its area set to the bounds):
    ComfyUI runs them on a crop, where the content row and the injected features do not line up. Read from
    the conditioning as given (ComfyUI copies every area into the other prompts when it prepares them)."""
    names = [("positive", "positive"), ("negative", "negative")]
    names += [(f"style_{i}", f"styles (style {i + 1}, {s.name}: its prompt)") for i, s in enumerate(styles)]
    for key, name in names:
        for c in original_conds.get(key) or ():
            area = c.get("area")
            if c.get("mask") is not None and c.get("set_area_to_bounds"):
                what = "a conditioning mask with its area set to the mask bounds"
            elif area is not None and len(area) == 4 and area[0] != "percentage":
                height, width, y, x = (int(v) for v in area)
                if y <= 0 and x <= 0 and height >= hw[0] and width >= hw[1]:
                    continue
                what = f"an area of {height}x{width} at ({y}, {x}) of the {hw[0]}x{hw[1]} latent"
            elif area is not None:
                if tuple(float(v) for v in area[1:]) == (1.0, 1.0, 0.0, 0.0):
                    continue
                what = f"an area of {tuple(area[1:])} (height, width, y, x as fractions)"
            else:
                continue
            raise ValueError(
                f"{name}: this conditioning covers part of the latent ({what}, from ConditioningSetArea or "
                "ConditioningSetMask). DiffStyler places each style by its mask: remove the area (or set the "
                "conditioning mask's area to 'default') and give the region as a style's mask"
            )
