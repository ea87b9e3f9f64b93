"""Registers the pack's V3 nodes with ComfyUI.

Each node family lives in its own module with a ``NODES`` list. A family that fails to import
(a broken optional dependency, say) is logged and skipped: it never takes the rest of the pack down.
"""

from __future__ import annotations

import importlib
import logging

from ._api import ComfyExtension, io

logger = logging.getLogger(__name__)

NODE_MODULES = ("invert", "style", "inject", "sample", "region", "segment", "train")


def collect_nodes() -> list[type[io.ComfyNode]]:
    """Import every node family and return its node classes, skipping families that fail to import."""
    found: list[type[io.ComfyNode]] = []
    for name in NODE_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue  # family not built yet
            logger.error("DiffStyler: node family %r disabled: %s", name, e)
            continue
        except Exception as e:  # noqa: BLE001 - one broken family must not disable the pack
            logger.exception("DiffStyler: node family %r disabled: %s", name, e)
            continue
        found.extend(getattr(module, "NODES", []))
    return found


class DiffStylerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return collect_nodes()
