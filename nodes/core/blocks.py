"""Block choices written as text (the Injector's ``feature_blocks`` / ``qk_blocks`` inputs; no ComfyUI).

``"double:18"``, ``"single:19-37"``, ``"double:17-18, single:30"``: a block kind, a colon, an index or an inclusive
range, comma separated. ``"auto"`` is the model family's default; ``"none"`` no block. Indices are checked against
the model's depth of that kind, so a typo is refused by name instead of silently injecting nowhere.
"""

from __future__ import annotations

AUTO = "auto"
NONE = "none"


def parse_blocks(text: str, depths: dict[str, int], name: str) -> tuple[tuple[str, int], ...]:
    """The ``(kind, index)`` blocks ``text`` names, sorted; ``depths``: kind -> number of blocks of that kind in this
    model. ValueError naming the input ``name``, the model's kinds and depths, and the fix."""
    spec = str(text).strip().lower()
    kinds = ", ".join(f"{k}:0-{n - 1}" for k, n in depths.items() if n > 0)
    hint = f"write blocks as kind:index or kind:first-last, comma separated (this model has {kinds}), or 'auto'"
    if spec == NONE or spec == "":
        return ()
    out: set[tuple[str, int]] = set()
    for part in spec.split(","):
        part = part.strip()
        kind, sep, rng = part.partition(":")
        kind = kind.strip()
        if not sep or kind not in depths:
            raise ValueError(f"{name}: {part!r} does not name a block: {hint}")
        first, dash, last = rng.strip().partition("-")
        try:
            a = int(first)
            b = int(last) if dash else a
        except ValueError:
            raise ValueError(f"{name}: {part!r} has no block index: {hint}") from None
        n = depths[kind]
        if not 0 <= a <= b < n:
            raise ValueError(f"{name}: {part!r} is outside this model's {n} {kind} blocks (0-{n - 1}): {hint}")
        out.update((kind, i) for i in range(a, b + 1))
    return tuple(sorted(out, key=lambda blk: (list(depths).index(blk[0]), blk[1])))


def format_blocks(blocks) -> str:
    """``(kind, index)`` blocks as text, ranges joined: ``(("single", 1), ("single", 2))`` -> ``"single:1-2"``."""
    parts: list[str] = []
    run: list = []
    for kind, i in list(blocks) + [(None, None)]:
        if run and (kind != run[0] or i != run[2] + 1):
            parts.append(f"{run[0]}:{run[1]}" + (f"-{run[2]}" if run[2] != run[1] else ""))
            run = []
        if kind is None:
            break
        run = [kind, run[1] if run else i, i]
    return ", ".join(parts) if parts else NONE
