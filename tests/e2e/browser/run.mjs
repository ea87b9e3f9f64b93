// Browser check of the shipped workflows and the FastSAM point/box editor (driven by tests/e2e/test_browser.py).
//
//   node tests/e2e/browser/run.mjs --url http://127.0.0.1:PORT --jobs jobs.json --out result.json \
//        --screenshots test-artifacts/browser --label 1.58.1 --user-data-dir /tmp/profile [--chromium /usr/bin/chromium]
//
// jobs.json: {"renderers": ["classic", "vue"], "load": [{"name", "path"}], "templates": {"module", "names"},
//             "queue": {"path", "click": [{"x", "y", "negative"}], "box": [x0, y0, x1, y1], "remove": {"x", "y"}}}
// Opens ComfyUI in headless Chromium (Debian's, via playwright-core; never a downloaded browser) once per
// renderer ("classic" = the LiteGraph canvas, "vue" = Nodes 2.0, setting Comfy.VueNodes.Enabled). In each it
// loads every workflow with app.loadGraphData and records what the frontend made of it; opens the template
// browser and records the pack's templates it lists (first renderer only); then loads the `queue` workflow,
// drives the FastSAM Mask editor with the real mouse and keyboard (click, shift-click, drag a box, right-click
// to remove, Ctrl+Z / Ctrl+Y), queues the prompt, waits for the output and the mask preview in the editor and
// keeps screenshots named <label>_<renderer>*.png. Console messages, page errors, failed requests and every
// deprecation warning (with its stack; LiteGraph.alwaysRepeatWarnings is set) are recorded per renderer.
// Everything is written to --out as JSON (the Python test asserts on it); the exit status is 0 whenever that
// JSON was written.
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--")) throw new Error(`unexpected argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ["url", "jobs", "out", "screenshots", "label", "user-data-dir"]) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const jobs = JSON.parse(fs.readFileSync(args.jobs, "utf8"));
const result = { console: [], pageErrors: [], failedRequests: [], deprecations: [], renderers: {}, steps: [] };
const started = Date.now();
let phase = "start";
const step = (name, extra = {}) => result.steps.push({ name: `${phase}: ${name}`, ms: Date.now() - started, ...extra });
const shot = (name) => path.join(args.screenshots, `${args.label}_${phase}${name}.png`);

// Runs before any page script: deprecation warnings keep their stack (to tell whose code triggered them) and
// repeat every time (LiteGraph.alwaysRepeatWarnings, set the moment the frontend publishes window.LiteGraph).
const INIT_SCRIPT = () => {
  Error.stackTraceLimit = 60;
  const seen = [];
  window.__diffstylerDeprecations = seen;
  const warn = console.warn;
  console.warn = function (...a) {
    const text = a.map((x) => (typeof x === "string" ? x : String(x?.message ?? x))).join(" ");
    if (/deprecat/i.test(text)) seen.push({ text: text.slice(0, 400), stack: new Error().stack ?? "" });
    return warn.apply(this, a);
  };
  let lg;
  Object.defineProperty(window, "LiteGraph", {
    configurable: true,
    get: () => lg,
    set(v) {
      lg = v;
      if (v && "alwaysRepeatWarnings" in v) {
        v.alwaysRepeatWarnings = true;
        window.__diffstylerRepeatWarnings = true;
      }
    },
  });
};

async function waitFor(page, fn, arg, what, timeout = 60000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}`);
  }
}

async function loadWorkflow(page, workflow, name) {
  return page.evaluate(
    async ({ workflow, name }) => {
      const registered = window.LiteGraph.registered_node_types;
      const missing = [...new Set(workflow.nodes.map((n) => n.type).filter((t) => !registered[t]))];
      await window.app.loadGraphData(structuredClone(workflow), true, true, name);
      await new Promise((r) => setTimeout(r, 300));
      const graph = window.app.graph;
      const serialized = graph.serialize();
      const dialogs = [...document.querySelectorAll(".p-dialog, [role=dialog]")]
        .filter((d) => d.offsetParent !== null)
        .map((d) => d.textContent.trim().slice(0, 300));
      const { output } = await window.app.graphToPrompt();
      return {
        missing,
        nodes: graph.nodes.map((n) => ({ id: n.id, type: n.type, hasErrors: !!n.has_errors })),
        widgets: Object.fromEntries(serialized.nodes.map((n) => [n.id, n.widgets_values ?? null])),
        prompt: output,
        dialogs,
      };
    },
    { workflow, name },
  );
}

/** Closes modal dialogs (Escape) so that clicks reach the canvas; returns their titles. */
async function closeDialogs(page) {
  const closed = [];
  for (let i = 0; i < 5; i++) {
    const open = await page.evaluate(() =>
      [...document.querySelectorAll(".p-dialog, [role=dialog]")]
        .filter((d) => d.offsetParent !== null)
        .map((d) => d.textContent.trim().slice(0, 80)),
    );
    if (!open.length) break;
    closed.push(...open);
    await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
  }
  return closed;
}

/**
 * Opens the template browser (command Comfy.BrowseTemplates), clicks the pack's entry (its folder name, listed
 * under "Extensions" or "Custom Nodes") and returns which of `names` the browser then shows, with the text of
 * the browser (the smallest box around that entry at least 600 px wide); then closes it with Escape.
 * Runs before any workflow is loaded, so no workflow tab carries those names.
 */
async function templateBrowser(page, templates) {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const entry = page.getByText(templates.module, { exact: true }).first();
  try {
    await entry.waitFor({ state: "visible", timeout: 30000 });
  } catch (e) {
    const text = await page.evaluate(() => document.body.innerText.slice(0, 3000));
    return { picked: null, shown: [], text, served: null, error: e.message.split("\n")[0] };
  }
  await entry.click();
  const shows = () =>
    page.evaluate(
      ({ names, module }) => {
        const hits = [...document.querySelectorAll("body *")].filter(
          (e) => e.offsetParent !== null && e.childElementCount === 0 && e.textContent.trim() === module,
        );
        let box = hits[0] ?? document.body;
        while (box.parentElement && box.getBoundingClientRect().width < 600) box = box.parentElement;
        const text = box.innerText;
        return { shown: names.filter((n) => text.includes(n)), text: text.slice(0, 3000) };
      },
      { names: templates.names, module: templates.module },
    );
  let seen = await shows();
  const end = Date.now() + 15000;
  while (seen.shown.length < templates.names.length && Date.now() < end) {
    await page.waitForTimeout(250);
    seen = await shows();
  }
  await page.screenshot({ path: shot("_templates") });
  const served = await page.evaluate(async () => (await fetch("/api/workflow_templates")).json());
  // Escape closes it on newer frontends; 1.35 needs its close button
  await page.keyboard.press("Escape");
  await page.waitForTimeout(300);
  for (let i = 0; i < 3 && (await entry.isVisible().catch(() => false)); i++) {
    const clicked = await page.evaluate((module) => {
      const hit = [...document.querySelectorAll("body *")].find(
        (e) => e.offsetParent !== null && e.childElementCount === 0 && e.textContent.trim() === module,
      );
      const dialog = hit?.closest(".p-dialog, [role=dialog]");
      const close = [...(dialog?.querySelectorAll("button") ?? [])].find(
        (b) => !b.disabled && (/close/i.test(b.getAttribute("aria-label") ?? "") || b.querySelector("i[class*='lucide--x'], i.pi-times")),
      );
      close?.click();
      return !!close;
    }, templates.module);
    if (!clicked) await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
  }
  if (await entry.isVisible().catch(() => false)) throw new Error("the template browser did not close");
  await closeDialogs(page);
  return { picked: templates.module, shown: seen.shown, text: seen.text, served };
}

/** Puts the node at the top left of the view at zoom 1; returns its id. */
async function showNode(page, nodeType) {
  const id = await page.evaluate((type) => {
    const app = window.app;
    const node = app.graph.nodes.find((n) => n.type === type);
    const ds = app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = 80 - node.pos[0];
    ds.offset[1] = 160 - node.pos[1];
    app.canvas.setDirty(true, true);
    return node.id;
  }, nodeType);
  await page.waitForTimeout(200);
  return id;
}

/** The node's screen box (CSS pixels): the Nodes 2.0 element, or the canvas node with its title bar. */
function nodeBox(page, id) {
  return page.evaluate((id) => {
    const el = document.querySelector(`[data-node-id="${id}"]`);
    if (el && el.offsetParent !== null) {
      const r = el.getBoundingClientRect();
      return { id, x: r.left, y: r.top, width: r.width, height: r.height, vue: true };
    }
    const app = window.app;
    const node = app.graph.getNodeById(id);
    const ds = app.canvas.ds;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    return {
      id,
      x: rect.left + (node.pos[0] + ds.offset[0]) * ds.scale,
      y: rect.top + (node.pos[1] + ds.offset[1] - title) * ds.scale,
      width: node.size[0] * ds.scale,
      height: (node.size[1] + title) * ds.scale,
      vue: false,
    };
  }, id);
}

/** Waits until the node has an editor whose canvas lies inside the node's box; returns that box. */
async function waitEditorPlaced(page, id) {
  let box = null;
  const end = Date.now() + 30000;
  while (Date.now() < end) {
    box = await nodeBox(page, id);
    const ok = await page.evaluate((b) => {
      const ed = window.app.graph.getNodeById(b.id)?.diffstylerEditor;
      if (!ed || !ed.canvas.isConnected) return false;
      const r = ed.canvas.getBoundingClientRect();
      const insideX = r.left >= b.x - 1 && r.right <= b.x + b.width + 1;
      return r.width > 50 && r.height > 50 && insideX && r.top >= b.y - 1 && r.bottom <= b.y + b.height + 1;
    }, box);
    if (ok) return box;
    await page.waitForTimeout(100);
  }
  const where = await page.evaluate((id) => {
    const c = window.app.graph.getNodeById(id)?.diffstylerEditor?.canvas;
    return c ? { connected: c.isConnected, rect: c.getBoundingClientRect().toJSON() } : null;
  }, id);
  throw new Error(`the editor canvas did not move into node ${id} (${JSON.stringify(box)}): ${JSON.stringify(where)}`);
}

/** The node's `points` / `boxes` text boxes (DOM textareas) the user sees, by widget name. */
const TEXT_BOXES = (id) => {
  const node = window.app.graph.getNodeById(id);
  const found = {};
  const el = document.querySelector(`[data-node-id="${id}"]`);
  for (const name of ["points", "boxes"]) {
    const w = node.widgets.find((x) => x.name === name);
    const classic = w?.element ?? w?.inputEl;
    if (classic instanceof HTMLTextAreaElement && classic.isConnected && classic.offsetParent !== null) {
      found[name] = classic;
    }
  }
  if (el && el.offsetParent !== null) {
    // Nodes 2.0: each textarea sits in the widget row labelled with the widget's name
    for (const ta of el.querySelectorAll("textarea")) {
      const row = ta.closest("[data-widget-name]") ?? ta.parentElement?.parentElement;
      const label = (row?.dataset?.widgetName ?? row?.textContent ?? "").trim();
      for (const name of ["points", "boxes"]) {
        if (label === name || label.startsWith(name)) found[name] = ta;
      }
    }
  }
  return found;
};
const SHOWN_TEXT = (id) => Object.fromEntries(Object.entries(TEXT_BOXES(id)).map(([k, ta]) => [k, ta.value]));

function editorState(page, nodeId) {
  return page.evaluate(
    ({ id, textBoxes, shownText }) => {
      const TEXT_BOXES = new Function(`return (${textBoxes})`)();
      const node = window.app.graph.getNodeById(id);
      const ed = node.diffstylerEditor;
      const w = (name) => node.widgets.find((x) => x.name === name)?.value;
      return {
        hasEditor: !!ed,
        mode: w("mode"),
        points: w("points"),
        boxes: w("boxes"),
        shown: new Function("TEXT_BOXES", `return (${shownText})`)(TEXT_BOXES)(id),
        prompts: ed?.prompts(),
        sources: ed?.sources(),
        rect: ed?.imageRect(),
        upstreamUrl: ed?.upstreamUrl(),
        lastRun: ed?.lastRun ?? null,
        // the frontend's own image preview under the widgets (the editor canvas already shows the run)
        nodeImages: (node.imgs ?? []).length,
        nodeOutputKeys: Object.keys(window.app.nodeOutputs?.[String(id)] ?? {}),
      };
    },
    { id: nodeId, textBoxes: TEXT_BOXES.toString(), shownText: SHOWN_TEXT.toString() },
  );
}

/** Standard deviation of the editor canvas pixels (0 for a blank canvas). */
function canvasSpread(page, nodeId) {
  return page.evaluate((id) => {
    const c = window.app.graph.getNodeById(id).diffstylerEditor.canvas;
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let sum = 0;
    let sq = 0;
    for (let i = 0; i < data.length; i += 4) {
      const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
      sum += v;
      sq += v * v;
    }
    const n = data.length / 4;
    return Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2));
  }, nodeId);
}

async function waitHistory(page, before, timeout = 300000) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    const history = await page.evaluate(async () => (await fetch("/history")).json());
    const done = Object.entries(history).filter(([id, h]) => !before.includes(id) && h.status?.completed != null);
    if (done.length) return { id: done[0][0], ...done[0][1] };
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error("the queued prompt did not finish in time");
}

/** Client coordinates of image pixel (x, y) in the editor, and what element lies there. */
async function clientOf(page, id, x, y) {
  const at = await page.evaluate(
    ({ id, x, y }) => window.app.graph.getNodeById(id).diffstylerEditor.imageToClient(x, y),
    { id, x, y },
  );
  if (!at) throw new Error(`the editor of node ${id} has no image to click`);
  at.hit = await page.evaluate(({ x, y }) => {
    const el = document.elementFromPoint(x, y);
    if (!el) return null;
    const testid = el.dataset?.testid ? `[${el.dataset.testid}]` : "";
    return `${el.tagName.toLowerCase()}${testid}`;
  }, at);
  return at;
}

/** Resolves after the page has drawn `n` more frames (its requestAnimationFrame callbacks have run). */
function frames(page, n = 2) {
  return page.evaluate(
    (n) => new Promise((resolve) => {
      const next = (left) => (left ? requestAnimationFrame(() => next(left - 1)) : resolve());
      next(n);
    }),
    n,
  );
}

/**
 * Presses Control+`key` on the page body (not in a text box) for the frontend's undo/redo, holding `key` until
 * the node's `points` text changes (or 30 s pass; the test then reports what it found), then releases.
 *
 * Why the key is held: the frontend's ChangeTracker handles keydown in a requestAnimationFrame and a keyup at
 * once; a keyup that lands after the Control frame but before the key's frame captures the graph first. In
 * Nodes 2.0 on 1.48.7 the graph after an undo differs from the restored state by a re-measured node size (a
 * pixel on this node, a hundredth on ImageCompositeMasked), so that capture becomes a new undo step and empties
 * the redo queue, and Ctrl+Y does nothing. A loaded machine makes this order likely (two CI failures). A
 * person holds keys for many frames; here each event waits for the frames it starts.
 */
async function chord(page, id, key) {
  await page.evaluate(() => document.activeElement?.blur?.());
  const pointsOf = (id) => window.app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "points")?.value;
  const before = await page.evaluate(pointsOf, id);
  await page.keyboard.down("Control");
  await frames(page);
  await page.keyboard.down(key);
  const end = Date.now() + 30000;
  while (Date.now() < end && (await page.evaluate(pointsOf, id)) === before) await page.waitForTimeout(100);
  await frames(page);
  await page.keyboard.up(key);
  await page.keyboard.up("Control");
  await page.waitForTimeout(400);
}

async function driveEditor(page, job) {
  const run = { actions: [] };
  const workflow = JSON.parse(fs.readFileSync(job.path, "utf8"));
  await loadWorkflow(page, workflow, path.basename(job.path));
  run.closedDialogs = await closeDialogs(page);
  const id = await showNode(page, "DiffStylerFastSAMMask");
  let box = await waitEditorPlaced(page, id);
  run.node = box;
  await waitFor(
    page,
    (id) => {
      const ed = window.app.graph.getNodeById(id)?.diffstylerEditor;
      return ed && ed.sources().baseState === "loaded" && ed.imageRect() !== null;
    },
    id,
    "the editor to show the connected LoadImage picture",
  );
  step("editor shows the connected picture");
  await page.screenshot({ path: shot("_before_click") });
  run.before = await editorState(page, id);
  const record = async (action, extra = {}) => {
    await page.waitForTimeout(150);
    const state = await editorState(page, id);
    run.actions.push({ action, ...extra, ...state });
  };
  for (const click of job.click) {
    const at = await clientOf(page, id, click.x, click.y);
    if (click.negative) await page.keyboard.down("Shift");
    await page.mouse.click(at.x, at.y);
    if (click.negative) await page.keyboard.up("Shift");
    await record(click.negative ? "shift-click" : "click", { target: click, hit: at.hit });
  }
  const [x0, y0, x1, y1] = job.box;
  const a = await clientOf(page, id, x0, y0);
  const b = await clientOf(page, id, x1, y1);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move((a.x + b.x) / 2, (a.y + b.y) / 2, { steps: 4 });
  await page.mouse.move(b.x, b.y, { steps: 4 });
  await page.mouse.up();
  await record("drag", { target: job.box, hit: a.hit });
  const r = await clientOf(page, id, job.remove.x, job.remove.y);
  await page.mouse.click(r.x, r.y, { button: "right" });
  await record("right-click", { target: job.remove, hit: r.hit });
  await closeDialogs(page); // a context menu of the frontend, had the click reached it
  await chord(page, id, "z");
  box = await waitEditorPlaced(page, id); // undo reloads the graph: a new node and editor
  await record("undo");
  await chord(page, id, "y");
  box = await waitEditorPlaced(page, id);
  await record("redo");
  // typing in the points text box shows on the picture; typing the old text back restores it
  const kept = run.actions.at(-1).points;
  for (const [action, text] of [["typed", job.typed], ["typed back", kept]]) {
    await page.evaluate(
      ({ id, textBoxes }) => {
        const TEXT_BOXES = new Function(`return (${textBoxes})`)();
        document.querySelector("[data-diffstyler-test]")?.removeAttribute("data-diffstyler-test");
        TEXT_BOXES(id).points?.setAttribute("data-diffstyler-test", "points");
      },
      { id, textBoxes: TEXT_BOXES.toString() },
    );
    await page.fill("[data-diffstyler-test=points]", text);
    await page.evaluate(() => document.activeElement?.blur?.());
    await waitFor(
      page,
      ({ id, text }) => window.app.graph.getNodeById(id).diffstylerEditor.signature.includes(text),
      { id, text },
      `the editor to redraw with the typed points ${text}`,
      10000,
    );
    await record(action);
  }
  step("edited in the editor");
  if (job.edits_only) return run; // for working on the script: no prompt run
  // Every renderer runs the same edits: without the server's cache the prompt runs again (a cached FastSAM
  // Mask would not send its preview to this new page)
  const free = await fetch(`${args.url}/api/free`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ free_memory: true }),
  });
  if (!free.ok) throw new Error(`POST /api/free answered ${free.status}`);
  const before = Object.keys(await page.evaluate(async () => (await fetch("/history")).json()));
  await page.evaluate(async () => {
    await window.app.queuePrompt(0, 1);
  });
  run.history = await waitHistory(page, before);
  step("prompt finished", { status: run.history.status?.status_str });
  const save = await showNode(page, "SaveImage");
  await waitFor(
    page,
    (id) => {
      // classic: the node's images drawn on the canvas; Nodes 2.0: <img> elements in the node
      const node = window.app.graph.getNodeById(id);
      const el = document.querySelector(`[data-node-id="${id}"]`);
      const imgs = el && el.offsetParent !== null ? [...el.querySelectorAll("img")] : (node.imgs ?? []);
      return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    },
    save,
    "the output image on the Save Image node",
  );
  run.saveImages = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    const el = document.querySelector(`[data-node-id="${id}"]`);
    const imgs = el && el.offsetParent !== null ? [...el.querySelectorAll("img")] : (node.imgs ?? []);
    return imgs.map((i) => ({ src: i.src, width: i.naturalWidth, height: i.naturalHeight }));
  }, save);
  await page.screenshot({ path: shot("_output") });
  step("output image shown");
  await showNode(page, "DiffStylerFastSAMMask");
  box = await waitEditorPlaced(page, id);
  await waitFor(
    page,
    (id) => {
      const ed = window.app.graph.getNodeById(id).diffstylerEditor;
      return ed.lastRun && ed.sources().overlayState === "loaded";
    },
    id,
    "the mask preview of the run in the editor",
  );
  await page.waitForTimeout(300);
  run.after = await editorState(page, id);
  run.canvasSpread = await canvasSpread(page, id);
  const clip = { x: Math.max(0, box.x - 10), y: Math.max(0, box.y - 10), width: box.width + 20 };
  clip.height = box.height + 20;
  run.screenshot = shot("");
  await page.screenshot({ path: run.screenshot, clip });
  step("screenshot");
  return run;
}

async function openApp(page, renderer) {
  // A returning user (no first-run template browser over the canvas) with the renderer under test.
  const settings = await fetch(`${args.url}/api/settings`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    // no restore of the previous page's workflow: it would race with the first loadGraphData of this page
    body: JSON.stringify({
      "Comfy.TutorialCompleted": true,
      "Comfy.Workflow.Persist": false,
      "Comfy.VueNodes.Enabled": renderer === "vue",
    }),
  });
  if (!settings.ok) throw new Error(`POST /api/settings answered ${settings.status}`);
  await page.goto(args.url, { waitUntil: "domcontentloaded" });
  await waitFor(
    page,
    () =>
      window.app?.graph &&
      window.app.canvas &&
      window.LiteGraph?.registered_node_types?.DiffStylerFastSAMMask &&
      (window.app.extensions ?? []).some((e) => e.name === "diffstyler.FastSAMEditor"),
    null,
    "the ComfyUI app with the DiffStyler nodes and the diffstyler.FastSAMEditor extension",
    120000,
  );
  step("app ready");
  return page.evaluate(() => ({
    frontendVersion: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    vueNodes: window.app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled") ?? null,
    alwaysRepeatWarnings: window.LiteGraph.alwaysRepeatWarnings ?? null,
  }));
}

/** A fresh browser profile (no stored workflows or tabs) with the page's messages recorded under `phase`. */
async function newPage(renderer) {
  const context = await chromium.launchPersistentContext(`${args["user-data-dir"]}_${renderer}`, {
    executablePath: args.chromium || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1600, height: 1000 },
  });
  await context.addInitScript(INIT_SCRIPT);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (["error", "warning", "assert"].includes(m.type())) {
      const loc = m.location() ?? {};
      result.console.push({ renderer: phase, type: m.type(), text: m.text(), url: loc.url ?? "" });
    }
  });
  page.on("pageerror", (e) => result.pageErrors.push({ renderer: phase, message: e.message, stack: e.stack ?? "" }));
  page.on("requestfailed", (r) =>
    result.failedRequests.push({ renderer: phase, url: r.url(), error: r.failure()?.errorText }),
  );
  page.on("response", (r) => {
    if (r.status() >= 400) result.failedRequests.push({ renderer: phase, url: r.url(), status: r.status() });
  });
  return { context, page };
}

async function collectDeprecations(page) {
  const seen = await page.evaluate(() => window.__diffstylerDeprecations ?? []).catch(() => []);
  result.deprecations.push(...seen.map((d) => ({ renderer: phase, ...d })));
}

async function main() {
  fs.mkdirSync(args.screenshots, { recursive: true });
  let current = null;
  try {
    for (const renderer of jobs.renderers) {
      phase = renderer;
      current = await newPage(renderer);
      const { page } = current;
      const out = { workflows: {} };
      result.renderers[renderer] = out;
      Object.assign(out, await openApp(page, renderer));
      if (jobs.templates && renderer === jobs.renderers[0]) {
        out.templates = await templateBrowser(page, jobs.templates);
        step("template browser");
      }
      for (const job of jobs.load) {
        const workflow = JSON.parse(fs.readFileSync(job.path, "utf8"));
        out.workflows[job.name] = await loadWorkflow(page, workflow, job.name);
        step(`loaded ${job.name}`);
      }
      if (jobs.queue) out.run = await driveEditor(page, jobs.queue);
      await collectDeprecations(page);
      await current.context.close();
      current = null;
    }
    phase = "end";
  } catch (e) {
    result.error = `[${phase}] ${String(e?.stack ?? e)}`;
    if (current) {
      await current.page.screenshot({ path: shot("_error") }).catch(() => {});
      await collectDeprecations(current.page);
    }
  } finally {
    result.ms = Date.now() - started;
    fs.writeFileSync(args.out, JSON.stringify(result, null, 1));
    await current?.context.close();
  }
}

await main();
