"""Prompt lengths on a model without a text mask (Flux.1; design Sec. 6, "batching").

Flux.1 attends over every text token, so a prompt padded to another length gives another picture. ComfyUI batches
only conditionings of equal shape there (``CONDRegular``): the styles' rows run in one transformer call when their
text lengths agree (Flux's T5 pads every prompt to at least 256 tokens, so prompts up to 256 tokens agree) and in one
call per length otherwise, which this module says in the log. A style's content row has to share its style's call
(the injection reads it there), so the content prompt must have the length of every prompt it feeds.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def _length(entries) -> int | None:
    for entry in entries or []:
        c = entry.get("model_conds", {}).get("c_crossattn")
        if c is not None and hasattr(c, "cond"):
            return int(c.cond.shape[1])
    return None


def check(conds: dict, styles: list, roles: list, windows: dict, base_branch: int) -> None:
    """ValueError naming the first prompt whose length differs from the content prompt's where a content row has to
    join it (its branch has an injection window); a log line when the rows' prompts have several lengths (one
    transformer call each). ``roles``: the run's ``(branch, is_uncond)`` rows; ``windows``: branch -> its windows."""
    content = _length(conds.get("content"))
    lengths = {}
    for br, uncond in roles:
        key = "negative" if uncond else ("positive" if br >= base_branch or br < 0 else f"style_{br}")
        n = _length(conds.get(key))
        if n is not None:
            lengths[key] = n
        if content is None or n is None or n == content or max(windows.get(br, (0.0, 0.0))) <= 0.0:
            continue
        names = {"positive": "the base prompt (positive)", "negative": "the negative prompt"}
        what = names.get(key) or f"style {br + 1} ({styles[br].name})"
        raise ValueError(
            f"{what}: its conditioning has {n} text tokens but the content prompt (DDIM Inversion's) has {content}: "
            "Flux.1 has no text mask, so DiffStyler never pads a prompt (it would change the picture), and the "
            "content row must run in the same transformer call as the rows it feeds. Keep prompts within 256 T5 "
            "tokens (T5 pads every prompt to 256), or give DDIM Inversion a content conditioning of the same length"
        )
    distinct = sorted(set(lengths.values()))
    if len(distinct) > 1:
        logger.info(
            "DiffStyler: the prompts have %d text lengths (%s tokens): one transformer call per length (Flux.1 has "
            "no text mask, so prompts are not padded to one length)",
            len(distinct),
            ", ".join(map(str, distinct)),
        )
