// Point and box editor for the FastSAM Mask node (DiffStylerFastSAMMask).
// The `points` / `boxes` widget text is the truth: the canvas only writes canonical JSON into those
// widgets and always redraws from them, so workflows keep running headless and text edits show here.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import * as geo from "./lib/geometry.js";
import {
  ImageCache,
  chooseSources,
  connectedLoaderValue,
  isImageRef,
  loadImageValueToRef,
  viewRoute,
} from "./lib/images.js";
import { renderFrame } from "./lib/render.js";

const NODE_ID = "DiffStylerFastSAMMask";
const EDITOR_WIDGET = "diffstyler_fastsam_editor";
const CLEAR_BUTTON = "Clear prompts";
const HINT = "Run once or connect a LoadImage to place points";
const HELP = "click: + point · shift-click: − point · drag: box · right-click: remove";
const MIN_HEIGHT = 220;
const PADDING = 6;
/** How often (ms) an editor checks its picture and its place on the page (see FastSAMEditor.tick). */
const TICK_MS = 400;
const LISTS = {
  points: { parse: geo.parsePoints, serialize: geo.serializePoints },
  boxes: { parse: geo.parseBoxes, serialize: geo.serializeBoxes },
};

/** Calls `fn` after the existing `target[name]` (if any), keeping its return value. */
function chain(target, name, fn) {
  const previous = target[name];
  target[name] = function (...args) {
    const result = previous?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Sets a widget value the way the UI does (value, then callback). Returns whether it changed. */
function setWidgetValue(node, name, value) {
  const widget = findWidget(node, name);
  if (!widget || widget.value === value) return false;
  widget.value = value;
  widget.callback?.(widget.value, app.canvas, node);
  return true;
}

/** Canvas editor bound to one node; exposed as `node.diffstylerEditor` for tests and other extensions. */
class FastSAMEditor {
  constructor(node) {
    this.node = node;
    this.element = document.createElement("div");
    this.element.style.cssText = "width:100%;height:100%;position:relative;overflow:hidden;";
    this.canvas = document.createElement("canvas");
    this.canvas.dataset.testid = "diffstyler-fastsam-canvas";
    this.canvas.style.cssText = "display:block;width:100%;height:100%;cursor:crosshair;touch-action:none;";
    this.element.appendChild(this.canvas);
    this.images = new ImageCache(() => new Image(), () => guarded(node, () => this.redraw()));
    /** Refs of the last run: {sourceUrl, previewUrl, upstreamUrl} or null. */
    this.lastRun = null;
    this.drag = null;
    this.notice = "";
    this.signature = "";
    this.listen();
    this.timer = window.setInterval?.(() => guarded(node, () => this.tick()), TICK_MS);
    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => this.redraw());
      this.resizeObserver.observe(this.canvas);
    }
  }

  listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    c.addEventListener("pointermove", (e) => this.onPointerMove(e));
    c.addEventListener("pointerup", (e) => this.onPointerUp(e));
    c.addEventListener("pointercancel", () => {
      this.drag = null;
      this.redraw();
    });
    c.addEventListener("contextmenu", (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.removeAt(e.clientX, e.clientY);
    });
    const wheel = (e) => {
      // Nothing scrolls here: let the graph zoom as it does elsewhere on the node.
      if (typeof app.canvas?.processMouseWheel !== "function") return;
      e.preventDefault();
      app.canvas.processMouseWheel(e);
    };
    c.addEventListener("wheel", wheel, { passive: false });
  }

  dispose() {
    if (this.timer != null) window.clearInterval?.(this.timer);
    this.resizeObserver?.disconnect();
    this.images.clear();
    // Nodes 2.0 may keep this element on the page for the node that replaces this one (same id: undo, redo,
    // a reload of the graph): mark it so that the new node's editor takes its place (see adoptPlace).
    this.element.dataset.diffstylerOrphan = String(this.node.id);
  }

  /**
   * Periodic check. The classic canvas calls sync() from the node's foreground draw; Nodes 2.0 draws nodes
   * as HTML and never calls it, so the picture would miss a change of the connected LoadImage there.
   */
  tick() {
    if (this.element.isConnected) this.sync();
    else this.adoptPlace();
  }

  /**
   * Takes the place of a disposed editor of a node with this node's id that is still on the page. Nodes 2.0
   * (frontends 1.35 to 1.58) keeps the HTML of a node whose id survives a graph reload (undo/redo) and mounts
   * a DOM widget only when that HTML is first built, so the new node's editor would otherwise never show and
   * the old one would edit a removed node.
   */
  adoptPlace() {
    if (this.element.isConnected || this.node.id == null) return false;
    const id = String(this.node.id);
    const stale = [...document.querySelectorAll("[data-diffstyler-orphan]")].find(
      (el) => el.dataset.diffstylerOrphan === id && el.isConnected && el !== this.element,
    );
    if (!stale) return false;
    stale.replaceWith(this.element);
    this.redraw();
    return true;
  }

  /** `/view` URL of a LoadImage connected directly to the `image` input, else null. */
  upstreamUrl() {
    const ref = loadImageValueToRef(connectedLoaderValue(this.node, "image"));
    return ref ? api.apiURL(viewRoute(ref)) : null;
  }

  /** URLs to draw ({base, overlay}, see chooseSources) and their load states (none|loading|loaded|error). */
  sources() {
    const { base, overlay } = chooseSources(this.upstreamUrl(), this.lastRun);
    return { base, overlay, baseState: this.images.state(base), overlayState: this.images.state(overlay) };
  }

  /** Where the input image is drawn, in canvas CSS pixels; null while there is no loaded image. */
  imageRect() {
    const img = this.images.get(this.sources().base);
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (!img || w <= 0 || h <= 0) return null;
    return geo.fitImageRect(img.naturalWidth, img.naturalHeight, w, h, PADDING);
  }

  /** Client (viewport) coordinates -> canvas CSS pixels; undoes the graph zoom transform. */
  clientToDisplay(clientX, clientY) {
    const c = this.canvas;
    return geo.clientToDisplay(c.getBoundingClientRect(), c.clientWidth, c.clientHeight, clientX, clientY);
  }

  /** Client coordinates of the centre of image pixel (px, py), or null without an image. */
  imageToClient(px, py) {
    const rect = this.imageRect();
    if (!rect) return null;
    const d = geo.pixelToDisplay(rect, px, py);
    const c = this.canvas;
    return geo.displayToClient(c.getBoundingClientRect(), c.clientWidth, c.clientHeight, d.x, d.y);
  }

  /** Parses one list from its widget text (throws the parser's Error on invalid text). */
  read(name) {
    return LISTS[name].parse(findWidget(this.node, name)?.value ?? "");
  }

  /** The prompts in the widgets: {points, boxes, errors}; a list that does not parse is empty. */
  prompts() {
    const errors = [];
    const [points, boxes] = ["points", "boxes"].map((name) => {
      try {
        return this.read(name);
      } catch (e) {
        errors.push(e.message);
        return [];
      }
    });
    return { points, boxes, errors };
  }

  /**
   * Applies `change` to one list and writes it back with `extra` widget values, as one undo step.
   * Refuses, with a notice on the canvas, while that widget's text does not parse: the text is the truth.
   * `change` returns the new list, or null for no change. Returns the new list or null.
   */
  edit(name, change, extra = {}) {
    let current;
    try {
      current = this.read(name);
    } catch (e) {
      this.notice = `Fix the ${name} text first: ${e.message}`;
      this.redraw();
      return null;
    }
    const next = change(current);
    if (next !== null) this.write({ [name]: LISTS[name].serialize(next), ...extra });
    return next;
  }

  /** Writes widget values as one undoable change, then redraws. */
  write(values) {
    app.canvas?.emitBeforeChange?.();
    try {
      for (const [name, value] of Object.entries(values)) setWidgetValue(this.node, name, value);
    } finally {
      app.canvas?.emitAfterChange?.();
    }
    this.notice = "";
    this.node.setDirtyCanvas?.(true, true);
    this.redraw();
  }

  /** Mode to set with a new prompt: a point leaves `everything` for `points`, a box always selects `boxes`. */
  modeFor(isBox) {
    const mode = findWidget(this.node, "mode")?.value;
    if (isBox) return mode === "boxes" ? {} : { mode: "boxes" };
    return mode === "everything" ? { mode: "points" } : {};
  }

  /** Adds a point under a client position (negative = label 0). Returns it, or null off the image. */
  addPointAt(clientX, clientY, negative = false) {
    const rect = this.imageRect();
    const d = this.clientToDisplay(clientX, clientY);
    if (!rect || !geo.isInsideImage(rect, d.x, d.y)) return null;
    const p = geo.displayToPixel(rect, d.x, d.y);
    const next = this.edit("points", (pts) => geo.addPoint(pts, p.x, p.y, negative), this.modeFor(false));
    return next ? next[next.length - 1] : null;
  }

  /** Adds the box spanned by two client positions (any order, clamped). Returns it, or null if too small. */
  addBoxAt(clientX0, clientY0, clientX1, clientY1) {
    const rect = this.imageRect();
    if (!rect) return null;
    const box = geo.dragToBox(rect, this.clientToDisplay(clientX0, clientY0), this.clientToDisplay(clientX1, clientY1));
    return box && this.edit("boxes", (boxes) => geo.addBox(boxes, box), this.modeFor(true)) ? box : null;
  }

  /** Removes the nearest point within reach of a client position, else the top box under it. */
  removeAt(clientX, clientY) {
    const rect = this.imageRect();
    if (!rect) return false;
    const d = this.clientToDisplay(clientX, clientY);
    const at = geo.displayToImage(rect, d.x, d.y);
    // Points are pixel indices drawn at pixel centres: measure from the centre (index + 0.5).
    const radius = geo.REMOVE_RADIUS_PX / rect.scale;
    const point = geo.removeNearestPoint(this.prompts().points, at.x - 0.5, at.y - 0.5, radius);
    if (point.removed) return !!this.edit("points", () => point.points);
    const box = geo.removeBoxAt(this.prompts().boxes, at.x, at.y);
    return box.removed ? !!this.edit("boxes", () => box.boxes) : false;
  }

  /** Empties both lists (the "Clear prompts" button). */
  clear() {
    const empty = geo.clearPrompts();
    this.write({ points: empty.pointsText, boxes: empty.boxesText });
  }

  onPointerDown(e) {
    if (e.button === 1) {
      app.canvas?.processMouseDown?.(e); // middle button pans the graph as usual
      return;
    }
    if (e.button !== 0 || !this.imageRect()) return;
    e.preventDefault();
    e.stopPropagation();
    const start = this.clientToDisplay(e.clientX, e.clientY);
    const client = { x: e.clientX, y: e.clientY };
    this.drag = { pointerId: e.pointerId, start, current: start, client, negative: e.shiftKey, moved: false };
    try {
      this.canvas.setPointerCapture(e.pointerId);
    } catch {
      // Synthetic events (tests) have no active pointer to capture; the drag still works.
    }
  }

  onPointerMove(e) {
    if ((e.buttons & 4) === 4) app.canvas?.processMouseMove?.(e);
    const d = this.drag;
    if (!d || d.pointerId !== e.pointerId) return;
    d.current = this.clientToDisplay(e.clientX, e.clientY);
    d.moved = d.moved || geo.isDrag(d.start, d.current);
    if (d.moved) this.redraw();
  }

  onPointerUp(e) {
    if (e.button === 1) app.canvas?.processMouseUp?.(e);
    const d = this.drag;
    if (!d || d.pointerId !== e.pointerId) return;
    this.drag = null;
    if (this.canvas.hasPointerCapture?.(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    e.stopPropagation();
    d.moved = d.moved || geo.isDrag(d.start, this.clientToDisplay(e.clientX, e.clientY));
    if (d.moved) this.addBoxAt(d.client.x, d.client.y, e.clientX, e.clientY);
    else this.addPointAt(d.client.x, d.client.y, d.negative);
    this.redraw();
  }

  /** Redraws when an input of the picture changed (called from the node's foreground draw). */
  sync() {
    if (this.currentSignature() !== this.signature) this.redraw();
  }

  /** What the picture depends on, as one string. */
  currentSignature() {
    const s = this.sources();
    const text = (name) => String(findWidget(this.node, name)?.value ?? "");
    return [s.base, s.overlay, s.baseState, s.overlayState, text("points"), text("boxes")].join("\u0000");
  }

  redraw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const h = c.clientHeight;
    this.signature = this.currentSignature();
    if (w <= 0 || h <= 0) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    if (!ctx) return;
    const src = this.sources();
    this.images.prune([src.base, src.overlay]);
    const { points, boxes, errors } = this.prompts();
    if (!errors.length) this.notice = ""; // the text was fixed since the refusal
    renderFrame(ctx, {
      width: w,
      height: h,
      dpr,
      base: this.images.get(src.base),
      overlay: this.images.get(src.overlay),
      rect: this.imageRect(),
      points,
      boxes,
      drag: this.drag?.moved ? this.drag : null,
      hint: src.baseState === "loading" ? "Loading image…" : HINT,
      footer: this.notice || errors[0] || HELP,
      footerIsError: !!(this.notice || errors.length),
    });
  }

  /** Takes the refs of a run from the node's UI output. */
  onExecuted(output) {
    const source = output?.diffstyler_source?.[0];
    // the node's own key (not "images", which the frontend would also draw below the editor); "images" is
    // still read for outputs a workflow restores from before the key changed
    const preview = (output?.diffstyler_preview ?? output?.images)?.[0];
    if (!isImageRef(source) && !isImageRef(preview)) return;
    this.lastRun = {
      sourceUrl: isImageRef(source) ? api.apiURL(viewRoute(source)) : null,
      previewUrl: isImageRef(preview) ? api.apiURL(viewRoute(preview)) : null,
      upstreamUrl: this.upstreamUrl(),
    };
    this.redraw();
  }
}

/** Runs an editor hook; a failure is reported once per node and never breaks the graph canvas. */
function guarded(node, fn) {
  try {
    fn();
  } catch (e) {
    if (node.diffstylerEditorFailed) return;
    node.diffstylerEditorFailed = true;
    console.error(`[diffstyler.FastSAMEditor] node ${node.id}:`, e);
  }
}

function setUpNode(node) {
  const editor = new FastSAMEditor(node);
  node.diffstylerEditor = editor;
  const widget = node.addDOMWidget(EDITOR_WIDGET, "diffstyler-fastsam-canvas", editor.element, {
    serialize: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => MIN_HEIGHT,
  });
  widget.serialize = false;
  const button = node.addWidget("button", CLEAR_BUTTON, null, () => editor.clear(), { serialize: false });
  if (button) button.serialize = false;
  for (const name of ["points", "boxes"]) {
    const w = findWidget(node, name);
    if (w) chain(w, "callback", () => guarded(node, () => editor.redraw()));
  }
  const [width, height] = node.size ?? [0, 0];
  node.setSize?.([Math.max(width, 360), Math.max(height, node.computeSize?.()?.[1] ?? 0, 460)]);
}

/** Chains `fn(editor, ...args)` onto a prototype hook, for nodes that have an editor. */
function hook(proto, name, fn) {
  chain(proto, name, function (...args) {
    const editor = this.diffstylerEditor;
    if (editor) guarded(this, () => fn(editor, ...args));
  });
}

app.registerExtension({
  name: "diffstyler.FastSAMEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      guarded(this, () => setUpNode(this));
    });
    hook(proto, "onExecuted", (editor, output) => editor.onExecuted(output));
    hook(proto, "onConnectionsChange", (editor) => editor.sync());
    hook(proto, "onConfigure", (editor) => {
      editor.adoptPlace();
      editor.redraw();
    });
    hook(proto, "onDrawForeground", (editor) => editor.sync());
    hook(proto, "onRemoved", (editor) => editor.dispose());
  },
});
