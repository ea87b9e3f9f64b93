"""UI workflows (the LiteGraph JSON the ComfyUI frontend saves): conversion to API prompts, checks, graph edits.

* :func:`ui_to_api` - UI workflow -> API prompt (what ``app.graphToPrompt()`` sends), skipping Note nodes.
* :func:`check_workflow` - structural checks a shipped workflow must pass (links, types, widget counts).
* graph edits used by the tests and the runner: widgets by name, upstream nodes, the style chain, adding
  nodes, :func:`use_tiny_models` (swaps model names and routes the VAE to the tiny VAE node) and
  :func:`add_paste_back`.

The node specs and widget rules live in :mod:`.workflow_spec`; the names callers use from there are re-exported
here, so one module serves them. Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import copy

from .demo import TINY_VAE_NODE
from .workflow_spec import (  # noqa: F401 - object_info is re-exported for the callers
    FILE_INPUTS,
    MODE_BYPASS,
    MODE_MUTED,
    NOTE_TYPES,
    frontend_widgets,
    input_spec,
    node_info,
    object_info,
    socket_inputs,
    spec_kind,
    spec_options,
    widget_default,
    widget_values,
)

# ------------------------------------------------------------------ UI -> API


def ui_to_api(workflow: dict, infos: dict) -> dict:
    """Convert a UI workflow to an API prompt ``{id: {"class_type", "inputs", "_meta"}}``.

    Widget values are mapped to input names with :func:`frontend_widgets`; values of widgets that are not
    inputs (control_after_generate, upload) are dropped; a linked input becomes ``[str(from_id), from_slot]``.
    Note nodes and muted nodes (mode 2) are skipped; bypassed nodes (mode 4) are refused.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    nodes_by_id = {n["id"]: n for n in workflow.get("nodes", [])}
    prompt: dict = {}
    for node in workflow.get("nodes", []):
        if node["type"] in NOTE_TYPES or node.get("mode", 0) == MODE_MUTED:
            continue
        if node.get("mode", 0) == MODE_BYPASS:
            raise ValueError(f"node {node['id']} ({node['type']}) is bypassed: un-bypass it or remove it")
        info = node_info(infos, node)
        inputs: dict = {}
        for widget, value in zip(frontend_widgets(info), widget_values(node, info)):
            if widget.input and widget.kind != "IMAGEUPLOAD":
                inputs[widget.name] = value
        for inp in node.get("inputs") or []:
            link_id = inp.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                raise ValueError(f"node {node['id']} input {inp['name']!r}: link {link_id} is not in 'links'")
            origin = nodes_by_id.get(link[1])
            if origin is None or origin.get("mode", 0) == MODE_MUTED:
                continue
            inputs[inp["name"]] = [str(link[1]), link[2]]
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


# ------------------------------------------------------------------ checks


def check_workflow(workflow: dict, infos: dict) -> list[str]:
    """Problems that would stop the workflow from loading or running as saved; ``[]`` when it is sound."""
    problems: list[str] = []
    nodes_by_id: dict = {}
    for node in workflow.get("nodes", []):
        if node["id"] in nodes_by_id:
            problems.append(f"node id {node['id']} is used twice")
        nodes_by_id[node["id"]] = node
    links = {}
    for link in workflow.get("links", []):
        if len(link) != 6:
            problems.append(f"link {link} is not [id, from, from_slot, to, to_slot, type]")
            continue
        links[link[0]] = link
    if workflow.get("version") != 0.4:
        problems.append(f"version is {workflow.get('version')!r}, expected 0.4")
    if nodes_by_id and workflow.get("last_node_id", -1) < max(nodes_by_id):
        problems.append("last_node_id is smaller than the largest node id")
    if links and workflow.get("last_link_id", -1) < max(links):
        problems.append("last_link_id is smaller than the largest link id")
    for link_id, (_, src, src_slot, dst, dst_slot, typ) in links.items():
        a, b = nodes_by_id.get(src), nodes_by_id.get(dst)
        if a is None or b is None:
            problems.append(f"link {link_id} joins missing nodes {src} -> {dst}")
            continue
        outs, ins = a.get("outputs") or [], b.get("inputs") or []
        if src_slot >= len(outs) or link_id not in (outs[src_slot].get("links") or []):
            problems.append(f"link {link_id}: node {src} output {src_slot} does not list it")
        elif outs[src_slot]["type"] != typ:
            problems.append(f"link {link_id}: type {typ} but node {src} output {src_slot} is {outs[src_slot]['type']}")
        if dst_slot >= len(ins) or ins[dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: node {dst} input {dst_slot} does not hold it")
        elif ins[dst_slot]["type"] not in (typ, "*") and not (ins[dst_slot]["type"] == "COMBO" and typ == "COMBO"):
            problems.append(
                f"link {link_id}: a {typ} goes into node {dst} input {ins[dst_slot]['name']} ({ins[dst_slot]['type']})"
            )
    for node in nodes_by_id.values():
        where = f"node {node['id']} ({node['type']})"
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None and inp["link"] not in links:
                problems.append(f"{where} input {inp['name']}: link {inp['link']} is missing from 'links'")
        for out in node.get("outputs") or []:
            for link_id in out.get("links") or []:
                if link_id not in links:
                    problems.append(f"{where} output {out['name']}: link {link_id} is missing from 'links'")
        if node["type"] in NOTE_TYPES:
            text = (node.get("widgets_values") or [""])[0]
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{where} has no text")
            continue
        info = infos.get(node["type"])
        if info is None:
            problems.append(f"{where}: unknown node type")
            continue
        linked = {i["name"] for i in node.get("inputs") or [] if i.get("link") is not None}
        for name, typ, optional in socket_inputs(info):
            if not optional and name not in linked:
                problems.append(f"{where}: required input {name} ({typ}) is not connected")
        widgets = frontend_widgets(info)
        values = node.get("widgets_values") or []
        optional = set((info.get("input", {}).get("optional") or {}))
        if len(values) < len(widgets) and all(w.name in optional for w in widgets[len(values) :]):
            # saved before the node gained these optional inputs: the frontend gives them their defaults
            values = widget_values(node, info)
        if len(values) != len(widgets):
            problems.append(
                f"{where}: {len(values)} widget values for {len(widgets)} widgets "
                f"({', '.join(w.name for w in widgets)})"
            )
            continue
        for widget, value in zip(widgets, values):
            spec = input_spec(info, widget.name) if widget.input else None
            if spec is None or spec_kind(spec) != "COMBO" or widget.name in FILE_INPUTS:
                continue
            options = spec[0] if isinstance(spec[0], (list, tuple)) else spec_options(spec).get("options", [])
            if value not in options:
                problems.append(f"{where}: {widget.name} = {value!r} is not one of {options}")
    return problems


# ------------------------------------------------------------------ graph queries and edits


def node(workflow: dict, node_id) -> dict:
    for n in workflow["nodes"]:
        if n["id"] == int(node_id):
            return n
    raise KeyError(f"no node {node_id}")


def nodes_of_type(workflow: dict, node_type: str) -> list[dict]:
    return sorted((n for n in workflow["nodes"] if n["type"] == node_type), key=lambda n: n["id"])


def _link(workflow: dict, link_id):
    return next(link for link in workflow["links"] if link[0] == link_id)


def upstream(workflow: dict, target: dict, input_name: str) -> tuple[dict, int] | None:
    """(node, output slot) linked into ``target``'s input ``input_name``, or None."""
    for inp in target.get("inputs") or []:
        if inp["name"] == input_name and inp.get("link") is not None:
            link = _link(workflow, inp["link"])
            return node(workflow, link[1]), link[2]
    return None


def downstream(workflow: dict, source: dict, slot: int) -> list[tuple[dict, str]]:
    """(node, input name) fed by ``source``'s output ``slot``."""
    out = []
    for link in workflow["links"]:
        if link[1] == source["id"] and link[2] == slot:
            target = node(workflow, link[3])
            out.append((target, target["inputs"][link[4]]["name"]))
    return out


def widget_index(infos: dict, n: dict, name: str) -> int:
    for i, w in enumerate(frontend_widgets(node_info(infos, n))):
        if w.name == name:
            return i
    raise KeyError(f"node {n['id']} ({n['type']}) has no widget {name!r}")


def get_widget(infos: dict, n: dict, name: str):
    return widget_values(n, node_info(infos, n))[widget_index(infos, n, name)]


def set_widget(infos: dict, n: dict, name: str, value) -> None:
    values = widget_values(n, node_info(infos, n))
    values[widget_index(infos, n, name)] = value
    n["widgets_values"] = values


def style_chain(workflow: dict) -> list[dict]:
    """The Style LoRA Loader nodes in chain order (style 1 first: its ``styles`` input is not connected)."""
    loaders = nodes_of_type(workflow, "DiffStylerStyleLoRA")
    heads = [n for n in loaders if upstream(workflow, n, "styles") is None]
    chain: list[dict] = []
    for head in heads:
        current = head
        while current is not None and current not in chain:
            chain.append(current)
            nxt = [
                t
                for t, name in downstream(workflow, current, 0)
                if t["type"] == "DiffStylerStyleLoRA" and name == "styles"
            ]
            current = nxt[0] if nxt else None
    return chain + [n for n in loaders if n not in chain]


def add_node(workflow: dict, infos: dict, node_type: str, pos, widgets_values=None, size=None, title=None) -> dict:
    """Append a node with the inputs/outputs the frontend would give it (no links yet); returns it."""
    new_id = max([n["id"] for n in workflow["nodes"]] + [workflow.get("last_node_id", 0)]) + 1
    n: dict = {
        "id": new_id,
        "type": node_type,
        "pos": list(pos),
        "size": list(size or (300, 100)),
        "flags": {},
        "order": len(workflow["nodes"]),
        "mode": 0,
    }
    if node_type in NOTE_TYPES:
        n.update(inputs=[], outputs=[], properties={}, widgets_values=list(widgets_values or [""]))
    else:
        info = node_info(infos, {"id": new_id, "type": node_type})
        widgets = frontend_widgets(info)
        inputs = [{"name": name, "type": typ, "link": None} for name, typ, _ in socket_inputs(info)]
        inputs += [
            {"name": w.name, "type": w.kind, "widget": {"name": w.name}, "link": None} for w in widgets if w.input
        ]
        names = info.get("output_name") or info["output"]
        outputs = [{"name": names[i], "type": t, "links": [], "slot_index": i} for i, t in enumerate(info["output"])]
        values = list(widgets_values) if widgets_values is not None else [widget_default(info, w) for w in widgets]
        n.update(inputs=inputs, outputs=outputs, properties={"Node name for S&R": node_type}, widgets_values=values)
    if title:
        n["title"] = title
    workflow["nodes"].append(n)
    workflow["last_node_id"] = new_id
    return n


def connect(workflow: dict, src: dict, src_slot: int, dst: dict, input_name: str) -> int:
    """Link ``src`` output ``src_slot`` to ``dst``'s input ``input_name`` (replacing its link); returns the id."""
    slot = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == input_name)
    old = dst["inputs"][slot].get("link")
    if old is not None:
        disconnect(workflow, old)
    link_id = max([link[0] for link in workflow["links"]] + [workflow.get("last_link_id", 0)]) + 1
    typ = src["outputs"][src_slot]["type"]
    workflow["links"].append([link_id, src["id"], src_slot, dst["id"], slot, typ])
    src["outputs"][src_slot].setdefault("links", [])
    src["outputs"][src_slot]["links"] = (src["outputs"][src_slot]["links"] or []) + [link_id]
    dst["inputs"][slot]["link"] = link_id
    workflow["last_link_id"] = link_id
    return link_id


def disconnect(workflow: dict, link_id: int) -> None:
    link = _link(workflow, link_id)
    src = node(workflow, link[1])
    src["outputs"][link[2]]["links"] = [i for i in src["outputs"][link[2]]["links"] or [] if i != link_id]
    node(workflow, link[3])["inputs"][link[4]]["link"] = None
    workflow["links"] = [x for x in workflow["links"] if x[0] != link_id]


def use_tiny_models(
    workflow: dict,
    infos: dict,
    checkpoint: str,
    loras: list[str] | None = None,
    fastsam: str | None = None,
    vae_seed: int = 0,
) -> dict:
    """A copy that runs on the test models: ``checkpoint`` in every checkpoint loader, ``loras[i]`` in style i's
    loader (when it names a file), ``fastsam`` in every FastSAM loader, and every use of a checkpoint's VAE
    routed to a ``DiffStylerTestTinyVAE`` (the tiny checkpoint has no VAE). Needs the test pack's node in infos.
    """
    wf = copy.deepcopy(workflow)
    for i, style in enumerate(style_chain(wf)):
        if loras and get_widget(infos, style, "lora_name") != "None":
            set_widget(infos, style, "lora_name", loras[min(i, len(loras) - 1)])
    for loader in nodes_of_type(wf, "DiffStylerFastSAMLoader"):
        if fastsam:
            set_widget(infos, loader, "model_name", fastsam)
    for ckpt in nodes_of_type(wf, "CheckpointLoaderSimple"):
        set_widget(infos, ckpt, "ckpt_name", checkpoint)
        users = downstream(wf, ckpt, 2)
        if not users:
            continue
        vae = add_node(wf, infos, TINY_VAE_NODE, (ckpt["pos"][0], ckpt["pos"][1] + 160), size=(300, 82))
        if len(vae["widgets_values"]) == 2:  # seed + control_after_generate
            vae["widgets_values"] = [vae_seed, "fixed"]
        else:
            vae["widgets_values"][0] = vae_seed
        for target, name in users:
            connect(wf, vae, 0, target, name)
    return wf


PASTE_TITLE = "Paste onto the original (Image Composite Masked)"
PASTE_NOTE = (
    "Original pixels outside the regions: VAE Decode changes every pixel of the picture, so Region Mask "
    "(DiffStyler) gives the region the sampler restyled (feathered outward by 'feather' pixels) and the offset of "
    "VAE Encode's crop, and the core Image Composite Masked pastes the decoded result onto the content picture "
    "there. The result has the picture's original size; every pixel farther than 'feather' from the region is the "
    "original's, bit for bit. With background = model, turn keep_original off to keep the whole decoded picture."
)


def add_paste_back(workflow: dict, infos: dict, feather: int = 16, keep_original: bool = True) -> bool:
    """Insert Region Mask (DiffStyler) + Image Composite Masked between the VAE Decode of the DiffStyler sampler and
    its Save Image (the shipped workflows' ending). Returns False (and changes nothing) when the workflow already
    has a Region Mask or does not end in Sampler -> VAE Decode -> Save Image with one VAE Encode of the content."""
    if nodes_of_type(workflow, "DiffStylerRegionMask"):
        return False
    saves = nodes_of_type(workflow, "SaveImage")
    encs = nodes_of_type(workflow, "VAEEncode")
    if len(saves) != 1 or len(encs) != 1:
        return False
    save = saves[0]
    up = upstream(workflow, save, "images")
    dec = up[0] if up else None
    if dec is None or dec["type"] != "VAEDecode":
        return False
    src = upstream(workflow, dec, "samples")
    vae = upstream(workflow, dec, "vae")
    content = upstream(workflow, encs[0], "pixels")
    if src is None or src[0]["type"] != "DiffStylerMaskedFusionSampler" or vae is None or content is None:
        return False
    styles = upstream(workflow, src[0], "styles")
    if styles is None:
        return False
    x0, y0 = dec["pos"]
    region = add_node(workflow, infos, "DiffStylerRegionMask", (x0, y0 + 120), [feather, keep_original], (300, 150))
    comp = add_node(workflow, infos, "ImageCompositeMasked", (x0 + 340, y0), [0, 0, False], (300, 150), PASTE_TITLE)
    save["pos"] = [x0 + 680, y0]
    connect(workflow, styles[0], styles[1], region, "styles")
    connect(workflow, content[0], content[1], region, "image")
    connect(workflow, vae[0], vae[1], region, "vae")
    connect(workflow, content[0], content[1], comp, "destination")
    connect(workflow, dec, 0, comp, "source")
    connect(workflow, region, 0, comp, "mask")
    connect(workflow, region, 1, comp, "x")
    connect(workflow, region, 2, comp, "y")
    connect(workflow, comp, 0, save, "images")
    add_node(workflow, infos, "Note", (x0, y0 + 320), [PASTE_NOTE], size=(640, 170))
    return True
