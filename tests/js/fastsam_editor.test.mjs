// Drives js/fastsam_editor.js in node against small stand-ins for the ComfyUI frontend and the DOM.
// The pack's js/ is copied to <tmp>/extensions/diffstyler/ next to stub <tmp>/scripts/{app,api}.js, the
// layout ComfyUI serves, so the extension's own "../../scripts/app.js" imports resolve unchanged.
// Run: node --test tests/js/
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import { parseBoxes, parsePoints, serializePoints } from "../../js/lib/geometry.js";

const JS_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "js");
const HINT = "Run once or connect a LoadImage to place points";

class FakeElement {
  constructor(tag) {
    Object.assign(this, { tagName: tag.toUpperCase(), style: {}, dataset: {}, children: [], listeners: {} });
    Object.assign(this, { clientWidth: 0, clientHeight: 0, width: 300, height: 150, bounds: null, captured: new Set() });
    this.isConnected = false;
  }
  /** Puts the element on the fake page (document.querySelectorAll finds it). */
  attach() {
    this.isConnected = true;
    onPage.add(this);
    return this;
  }
  replaceWith(other) {
    this.isConnected = false;
    onPage.delete(this);
    other.attach();
    this.replacedBy = other;
  }
  appendChild(child) {
    this.children.push(child);
    return child;
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  dispatch(type, props = {}) {
    const e = { type, button: 0, buttons: 1, pointerId: 1, shiftKey: false, defaultPrevented: false, ...props };
    e.preventDefault = () => (e.defaultPrevented = true);
    e.stopPropagation = () => {};
    for (const fn of this.listeners[type] ?? []) fn(e);
    return e;
  }
  getBoundingClientRect() {
    return this.bounds ?? { left: 0, top: 0, width: this.clientWidth, height: this.clientHeight };
  }
  getContext() {
    this.ctx ??= { calls: [] };
    return new Proxy(this.ctx, {
      get: (t, k) => (k in t ? t[k] : (...args) => t.calls.push({ name: k, args, fillStyle: t.fillStyle })),
    });
  }
  setPointerCapture(id) {
    this.captured.add(id);
  }
  hasPointerCapture(id) {
    return this.captured.has(id);
  }
  releasePointerCapture(id) {
    this.captured.delete(id);
  }
}

/** Elements on the fake page, and the callbacks of window.setInterval (null once cleared). */
const onPage = new Set();
const timers = [];

/** Image stand-in: loads resolve when the test calls finishLoads(), sizes by URL substring. */
const pendingImages = [];
class FakeImage {
  set src(url) {
    this.url = url;
    pendingImages.push(this);
  }
}
function finishLoads(sizes) {
  for (const img of pendingImages.splice(0)) {
    const size = Object.entries(sizes).find(([part]) => img.url.includes(part))?.[1];
    img.naturalWidth = size?.[0] ?? 0;
    img.naturalHeight = size?.[1] ?? 0;
    (size ? img.onload : img.onerror)();
  }
}

class FakeNode {
  constructor() {
    this.id = 3;
    this.graph = {};
    this.size = [300, 200];
    this.inputs = [{ name: "image", link: null }];
    this.widgets = [
      { name: "mode", type: "combo", value: "everything" },
      { name: "points", type: "customtext", value: "" },
      { name: "boxes", type: "customtext", value: "" },
    ];
    this.upstream = null;
  }
  addDOMWidget(name, type, element, options) {
    const widget = { name, type, element, options };
    this.widgets.push(widget);
    return widget;
  }
  addWidget(type, name, value, callback, options) {
    const widget = { type, name, value, callback, options };
    this.widgets.push(widget);
    return widget;
  }
  getInputNode(slot) {
    return this.inputs[slot]?.link != null ? this.upstream : null;
  }
  computeSize() {
    return [300, 420];
  }
  setSize(size) {
    this.size = size;
  }
  setDirtyCanvas() {}
}

const w = (node, name) => node.widgets.find((x) => x.name === name);
const texts = (editor) => (editor.canvas.ctx?.calls ?? []).filter((c) => c.name === "fillText").map((c) => c.args[0]);
const arcs = (editor) => (editor.canvas.ctx?.calls ?? []).filter((c) => c.name === "arc");
const loadImage = (value) => ({ type: "LoadImage", widgets: [{ name: "image", value }] });

let root;
let extension;
let NodeType;
const logged = [];
const changes = { before: 0, after: 0 };

before(async () => {
  root = mkdtempSync(join(tmpdir(), "diffstyler-js-"));
  mkdirSync(join(root, "scripts"));
  writeFileSync(join(root, "scripts", "app.js"), "export const app = globalThis.__testApp;\n");
  writeFileSync(join(root, "scripts", "api.js"), "export const api = globalThis.__testApi;\n");
  cpSync(JS_DIR, join(root, "extensions", "diffstyler"), { recursive: true });
  writeFileSync(join(root, "package.json"), '{"type": "module"}\n');
  globalThis.window = {
    devicePixelRatio: 1,
    setInterval: (fn) => timers.push(fn),
    clearInterval: (id) => (timers[id - 1] = null),
  };
  globalThis.document = {
    createElement: (tag) => new FakeElement(tag),
    querySelectorAll: (selector) => {
      assert.equal(selector, "[data-diffstyler-orphan]");
      return [...onPage].filter((el) => el.dataset.diffstylerOrphan !== undefined);
    },
  };
  globalThis.Image = FakeImage;
  globalThis.__testApi = { apiURL: (route) => `/api${route}` };
  globalThis.__testApp = {
    registerExtension: (ext) => (extension = ext),
    canvas: { emitBeforeChange: () => changes.before++, emitAfterChange: () => changes.after++ },
  };
  for (const level of ["error", "warn"]) {
    const original = console[level];
    console[level] = (...args) => {
      logged.push([level, ...args]);
      original(...args);
    };
  }
  await import(pathToFileURL(join(root, "extensions", "diffstyler", "fastsam_editor.js")).href);
  NodeType = class extends FakeNode {};
  await extension.beforeRegisterNodeDef(NodeType, { name: "DiffStylerFastSAMMask" });
});

after(() => rmSync(root, { recursive: true, force: true }));

beforeEach(() => {
  pendingImages.length = 0;
});

/** A created node whose canvas has a 360x300 layout, shown zoomed 2x at (100, 40) on screen. */
function createNode() {
  const node = new NodeType();
  node.onNodeCreated();
  const canvas = node.diffstylerEditor.canvas;
  Object.assign(canvas, { clientWidth: 360, clientHeight: 300, bounds: { left: 100, top: 40, width: 720, height: 600 } });
  node.diffstylerEditor.redraw();
  return node;
}

function createNodeWithImage(value = "sub/cat.png", size = [800, 600]) {
  const node = createNode();
  node.upstream = loadImage(value);
  node.inputs[0].link = 11;
  node.onConnectionsChange();
  finishLoads({ "cat.png": size, "dog.png": size });
  return node;
}

describe("registration", () => {
  test("registers diffstyler.FastSAMEditor and only touches DiffStylerFastSAMMask", async () => {
    assert.equal(extension.name, "diffstyler.FastSAMEditor");
    const Other = class extends FakeNode {};
    await extension.beforeRegisterNodeDef(Other, { name: "LoadImage" });
    assert.equal(Other.prototype.onNodeCreated, undefined);
    assert.equal(typeof NodeType.prototype.onExecuted, "function");
  });

  test("adds an unserialised canvas widget and a Clear prompts button", () => {
    const node = createNode();
    const dom = w(node, "diffstyler_fastsam_editor");
    assert.equal(dom.options.serialize, false);
    assert.equal(dom.serialize, false);
    assert.equal(dom.options.getMinHeight(), 220);
    const canvas = dom.element.children[0];
    assert.equal(canvas.dataset.testid, "diffstyler-fastsam-canvas");
    assert.equal(node.diffstylerEditor.canvas, canvas);
    const button = w(node, "Clear prompts");
    assert.equal(button.type, "button");
    assert.equal(button.serialize, false);
    assert.deepEqual(node.size, [360, 460]);
  });
});

describe("without an image", () => {
  test("shows the hint and ignores clicks", () => {
    const node = createNode();
    const editor = node.diffstylerEditor;
    assert.deepEqual(texts(editor), [HINT]);
    assert.equal(editor.imageRect(), null);
    assert.equal(editor.addPointAt(200, 200), null);
    editor.canvas.dispatch("pointerdown", { clientX: 200, clientY: 200 });
    editor.canvas.dispatch("pointerup", { clientX: 200, clientY: 200 });
    assert.equal(w(node, "points").value, "");
    assert.equal(w(node, "mode").value, "everything");
  });

  test("a LoadImage that fails to load falls back to the hint", () => {
    const node = createNodeWithImage("missing.png");
    assert.equal(node.diffstylerEditor.sources().baseState, "error");
    assert.equal(texts(node.diffstylerEditor).at(-1), HINT);
  });
});

describe("with a connected LoadImage", () => {
  test("draws the /view URL of the LoadImage value, letterboxed", () => {
    const editor = createNodeWithImage().diffstylerEditor;
    assert.equal(editor.sources().base, "/api/view?filename=cat.png&subfolder=sub&type=input");
    const rect = editor.imageRect();
    assert.equal(rect.scale, 348 / 800); // 360 - 2 * 6 padding across, 800 px wide
    assert.equal(rect.x, 6);
    assert.ok(Math.abs(rect.y + rect.height / 2 - 150) < 1e-9);
  });

  test("click adds a positive point, shift-click a negative one, in image pixels", () => {
    const node = createNodeWithImage();
    const editor = node.diffstylerEditor;
    const a = editor.imageToClient(100, 50);
    assert.deepEqual(editor.addPointAt(a.x, a.y), { x: 100, y: 50, label: 1 });
    assert.equal(w(node, "mode").value, "points");
    const b = editor.imageToClient(799, 599);
    editor.canvas.dispatch("pointerdown", { clientX: b.x, clientY: b.y, shiftKey: true });
    editor.canvas.dispatch("pointerup", { clientX: b.x + 1, clientY: b.y });
    const expected = [
      { x: 100, y: 50, label: 1 },
      { x: 799, y: 599, label: 0 },
    ];
    assert.equal(w(node, "points").value, serializePoints(expected));
    assert.equal(arcs(editor).length >= 2, true);
    assert.equal(changes.before, changes.after);
  });

  test("a click in the letterbox bar adds nothing", () => {
    const node = createNodeWithImage();
    const rect = node.diffstylerEditor.imageRect();
    assert.equal(node.diffstylerEditor.addPointAt(100 + 2 * 180, 40 + 2 * (rect.y - 3)), null);
    assert.equal(w(node, "points").value, "");
  });

  test("dragging draws a box in any direction and switches mode to boxes", () => {
    const node = createNodeWithImage();
    const editor = node.diffstylerEditor;
    const a = editor.imageToClient(9.8, 9.8); // pixel centre + 0.5: continuous 10.3, rounds to edge 10
    const b = editor.imageToClient(199.8, 149.8);
    editor.canvas.dispatch("pointerdown", { clientX: b.x, clientY: b.y });
    editor.canvas.dispatch("pointermove", { clientX: (a.x + b.x) / 2, clientY: (a.y + b.y) / 2 });
    assert.ok(editor.canvas.ctx.calls.some((c) => c.name === "setLineDash"));
    editor.canvas.dispatch("pointerup", { clientX: a.x, clientY: a.y });
    assert.deepEqual(parseBoxes(w(node, "boxes").value), [[10, 10, 200, 150]]);
    assert.equal(w(node, "mode").value, "boxes");
    assert.equal(w(node, "points").value, "");
  });

  test("edited widget text is redrawn; invalid text is reported and never overwritten", () => {
    const node = createNodeWithImage();
    const editor = node.diffstylerEditor;
    w(node, "points").value = '[{"x": 1, "y": 2}, {"x": 3, "y": 4, "label": 0}, {"x": 5, "y": 6}]';
    node.onDrawForeground();
    assert.equal(arcs(editor).length, 3);
    w(node, "points").value = "[{x:1}]";
    node.onDrawForeground();
    assert.match(texts(editor).at(-1), /^points: invalid JSON/);
    const p = editor.imageToClient(5, 5);
    assert.equal(editor.addPointAt(p.x, p.y), null);
    assert.equal(w(node, "points").value, "[{x:1}]");
    assert.match(texts(editor).at(-1), /^Fix the points text first/);
    w(node, "points").value = "[]";
    node.onDrawForeground();
    assert.match(texts(editor).at(-1), /^click: \+ point/);
  });

  test("right-click removes the nearest point, else the box under it; Clear empties both", () => {
    const node = createNodeWithImage();
    const editor = node.diffstylerEditor;
    w(node, "points").value = serializePoints([
      { x: 100, y: 100, label: 1 },
      { x: 400, y: 300, label: 0 },
    ]);
    w(node, "boxes").value = "[[300, 200, 500, 400]]";
    const near = editor.imageToClient(405, 296); // ~6 image px = ~2.6 display px away
    const e = editor.canvas.dispatch("contextmenu", { clientX: near.x, clientY: near.y });
    assert.equal(e.defaultPrevented, true);
    assert.deepEqual(parsePoints(w(node, "points").value), [{ x: 100, y: 100, label: 1 }]);
    assert.deepEqual(parseBoxes(w(node, "boxes").value), [[300, 200, 500, 400]]);
    editor.canvas.dispatch("contextmenu", { clientX: near.x, clientY: near.y });
    assert.equal(w(node, "boxes").value, "[]");
    w(node, "Clear prompts").callback();
    assert.equal(w(node, "points").value, "[]");
    assert.equal(w(node, "boxes").value, "[]");
  });
});

describe("Nodes 2.0 (the node is HTML: no foreground draw, kept across a graph reload)", () => {
  const tick = (node) => timers[node.diffstylerEditor.timer - 1]();

  test("the periodic check redraws when the connected LoadImage changes", () => {
    const node = createNodeWithImage();
    node.diffstylerEditor.element.attach();
    node.upstream = loadImage("dog.png");
    tick(node);
    finishLoads({ "dog.png": [320, 640] });
    assert.equal(node.diffstylerEditor.imageRect().imageHeight, 640);
    assert.ok(node.diffstylerEditor.canvas.ctx.calls.some((c) => c.name === "drawImage" && c.args[0].url.includes("dog")));
  });

  test("a node that replaces a removed one with its id takes the removed editor's place on the page", () => {
    const old = createNodeWithImage();
    const oldElement = old.diffstylerEditor.element.attach();
    const oldTimer = old.diffstylerEditor.timer;
    old.onRemoved();
    assert.equal(timers[oldTimer - 1], null, "a removed node's check stops");
    assert.equal(oldElement.isConnected, true, "the page (Nodes 2.0) kept the removed node's editor");
    const other = createNode();
    other.id = 4;
    other.onConfigure({});
    assert.equal(other.diffstylerEditor.element.isConnected, false, "only a node with the same id takes it");
    const node = createNode();
    node.onConfigure({});
    assert.equal(oldElement.replacedBy, node.diffstylerEditor.element);
    assert.equal(node.diffstylerEditor.element.isConnected, true);
    oldElement.attach(); // a second place is taken by the periodic check as well
    const again = createNode();
    tick(again);
    assert.equal(oldElement.replacedBy, again.diffstylerEditor.element);
    for (const el of onPage) el.isConnected = false;
    onPage.clear();
  });
});

describe("after a run", () => {
  const output = {
    diffstyler_preview: [{ filename: "mask_00001_.png", subfolder: "", type: "temp" }],
    diffstyler_source: [{ filename: "src_00001_.png", subfolder: "fastsam", type: "temp" }],
  };

  test("draws the run's input with the mask preview over it", () => {
    const node = createNodeWithImage();
    node.onExecuted(output);
    const editor = node.diffstylerEditor;
    assert.deepEqual(
      [editor.sources().base, editor.sources().overlay],
      ["/api/view?filename=src_00001_.png&subfolder=fastsam&type=temp", "/api/view?filename=mask_00001_.png&subfolder=&type=temp"],
    );
    finishLoads({ src_: [800, 600], mask_: [800, 600] });
    const last = editor.canvas.ctx.calls.filter((c) => c.name === "drawImage").slice(-2);
    assert.deepEqual(last.map((c) => c.args[0].url), [editor.sources().base, editor.sources().overlay]);
  });

  test("reads the preview of outputs saved before it had its own key", () => {
    const node = createNodeWithImage();
    node.onExecuted({ images: output.diffstyler_preview, diffstyler_source: output.diffstyler_source });
    assert.equal(node.diffstylerEditor.sources().overlay, "/api/view?filename=mask_00001_.png&subfolder=&type=temp");
  });

  test("works without a LoadImage, and a changed LoadImage replaces the stale run", () => {
    const node = createNode();
    node.onExecuted(output);
    finishLoads({ src_: [64, 32], mask_: [64, 32] });
    assert.equal(node.diffstylerEditor.imageRect().imageWidth, 64);
    node.upstream = loadImage("dog.png");
    node.inputs[0].link = 12;
    node.onDrawForeground();
    finishLoads({ "dog.png": [320, 640] });
    assert.deepEqual(node.diffstylerEditor.sources().overlay, null);
    assert.equal(node.diffstylerEditor.imageRect().imageHeight, 640);
  });

  test("nothing was logged to console.error or console.warn", () => {
    assert.deepEqual(logged, []);
  });
});
