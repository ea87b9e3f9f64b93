"""Node specs as the ComfyUI frontend sees them, and the widgets it builds from them (UI workflow files).

* :func:`object_info` - ``/object_info``-style node specs from the in-process ``nodes.NODE_CLASS_MAPPINGS``
  (a live server's ``/object_info`` has the same shape and works everywhere a spec dict is taken).
* :func:`frontend_widgets` - the widgets the frontend (1.35, ComfyUI v0.8.0) builds for a node, in order:
  the widget inputs of ``required`` then ``optional`` in ``input_order``, a ``control_after_generate`` value
  after seed-like INTs (and any input that asks for one), an ``upload`` button after the required inputs of
  image loaders. ``widgets_values`` holds one value per widget in that order (:func:`widget_values`).

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

from dataclasses import dataclass

NOTE_TYPES = ("Note", "MarkdownNote")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
# Combo inputs whose options are file lists: a placeholder model name there is expected, not an error.
FILE_INPUTS = (
    *("ckpt_name", "lora_name", "model_name", "image", "vae_name", "clip_folder"),
    *("unet_name", "clip_name1", "clip_name2"),  # UNETLoader, DualCLIPLoader (the Flux workflows)
)
MODE_MUTED, MODE_BYPASS = 2, 4


@dataclass(frozen=True)
class Widget:
    """One frontend widget: ``input`` is False for widgets that are not node inputs (control, upload)."""

    name: str
    input: bool = True
    kind: str = ""


# ------------------------------------------------------------------ node specs


def object_info(class_types=None) -> dict:
    """``/object_info`` entries for the registered node classes (ComfyUI must be imported and set up)."""
    import nodes

    out = {}
    for name in class_types or list(nodes.NODE_CLASS_MAPPINGS):
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        if hasattr(cls, "GET_NODE_INFO_V1"):  # a V3 node
            out[name] = cls.GET_NODE_INFO_V1()
            continue
        types = cls.INPUT_TYPES()
        out[name] = {
            "input": types,
            "input_order": {k: list(v) for k, v in types.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "name": name,
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        }
    return out


def spec_kind(spec) -> str:
    t = spec[0]
    return "COMBO" if isinstance(t, (list, tuple)) else str(t)


def spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _ordered(info: dict, section: str) -> list[tuple[str, list]]:
    specs = info.get("input", {}).get(section, {}) or {}
    order = (info.get("input_order") or {}).get(section) or list(specs)
    return [(name, specs[name]) for name in order if name in specs]


def is_widget(spec) -> bool:
    return spec_kind(spec) in WIDGET_TYPES and not spec_options(spec).get("forceInput")


def frontend_widgets(info: dict) -> list[Widget]:
    """The node's widgets in the order the frontend builds them (= the order of ``widgets_values``)."""
    out: list[Widget] = []
    for section in ("required", "optional"):
        upload = False
        for name, spec in _ordered(info, section):
            if not is_widget(spec):
                continue
            kind, opts = spec_kind(spec), spec_options(spec)
            out.append(Widget(name, True, kind))
            control = opts.get("control_after_generate", name in SEED_NAMES) if kind == "INT" else False
            if kind == "COMBO":
                control = bool(opts.get("control_after_generate"))
                upload = upload or (section == "required" and any(opts.get(f) for f in UPLOAD_FLAGS))
            if control:
                out.append(Widget("control_after_generate", False, "COMBO"))
        if upload:
            out.append(Widget("upload", True, "IMAGEUPLOAD"))
    return out


def socket_inputs(info: dict) -> list[tuple[str, str, bool]]:
    """(name, type, optional) of the inputs that are sockets only (no widget), in frontend order."""
    return [
        (name, spec_kind(spec), section == "optional")
        for section in ("required", "optional")
        for name, spec in _ordered(info, section)
        if not is_widget(spec)
    ]


def input_spec(info: dict, name: str):
    for section in ("required", "optional"):
        spec = (info.get("input", {}).get(section) or {}).get(name)
        if spec is not None:
            return spec
    return None


def node_info(infos: dict, node: dict) -> dict:
    """The spec of ``node``'s type in ``infos``; ValueError naming a type this ComfyUI does not know."""
    info = infos.get(node["type"])
    if info is None:
        raise ValueError(
            f"node {node['id']} has type {node['type']!r}, which this ComfyUI does not know: install the node pack "
            "that provides it (is comfyui-diffstyler in custom_nodes?)"
        )
    return info


def widget_values(node: dict, info: dict) -> list:
    values = node.get("widgets_values") or []
    widgets = frontend_widgets(info)
    if isinstance(values, dict):  # some frontends save {name: value}
        return [values.get(w.name) for w in widgets]
    if len(values) > len(widgets):
        raise ValueError(
            f"node {node['id']} ({node['type']}) has {len(values)} widget values but the node has {len(widgets)} "
            f"widgets ({', '.join(w.name for w in widgets)}): the workflow was saved for another version of the node"
        )
    defaults = [widget_default(info, w) for w in widgets[len(values) :]]
    return list(values) + defaults


def widget_default(info: dict, widget: Widget):
    spec = input_spec(info, widget.name)
    if spec is None:
        return "fixed" if widget.name == "control_after_generate" else "image"
    if "default" in spec_options(spec):
        return spec_options(spec)["default"]
    if isinstance(spec[0], (list, tuple)):
        return spec[0][0] if spec[0] else None
    options = spec_options(spec).get("options")
    return options[0] if options else None
