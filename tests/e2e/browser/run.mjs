// Browser check of the shipped workflows and the FastSAM point/box editor (driven by tests/e2e/test_browser.py).
//
//   node tests/e2e/browser/run.mjs --url http://127.0.0.1:PORT --jobs jobs.json --out result.json \
//        --screenshot test-artifacts/fastsam_editor.png --user-data-dir /tmp/profile [--chromium /usr/bin/chromium]
//
// jobs.json: {"load": [{"name", "path"}], "queue": {"path", "click": [{"x", "y", "negative"}]}}
// Opens ComfyUI in headless Chromium (Debian's, via playwright-core; never a downloaded browser), loads each
// workflow with app.loadGraphData and records what the frontend made of it (missing node types, widget values,
// the API prompt from app.graphToPrompt). Then it loads the `queue` workflow, clicks the FastSAM Mask node's
// canvas with the real mouse, queues the prompt, waits for the run and for the images to show, and takes the
// screenshot. Everything is written to --out as JSON (the Python test asserts on it); the exit status is 0
// whenever that JSON was written.
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
  for (const k of ["url", "jobs", "out", "screenshot", "user-data-dir"]) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const jobs = JSON.parse(fs.readFileSync(args.jobs, "utf8"));
const result = { console: [], pageErrors: [], failedRequests: [], workflows: {}, steps: [] };
const started = Date.now();
const step = (name, extra = {}) => result.steps.push({ name, ms: Date.now() - started, ...extra });

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

/** Puts the node at the top left of the view at zoom 1 and returns its screen box (CSS pixels). */
async function showNode(page, nodeType) {
  return page.evaluate((type) => {
    const app = window.app;
    const node = app.graph.nodes.find((n) => n.type === type);
    const ds = app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = 80 - node.pos[0];
    ds.offset[1] = 160 - node.pos[1];
    app.canvas.setDirty(true, true);
    const rect = app.canvas.canvas.getBoundingClientRect();
    const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    return {
      id: node.id,
      x: rect.left + (node.pos[0] + ds.offset[0]) * ds.scale,
      y: rect.top + (node.pos[1] + ds.offset[1] - title) * ds.scale,
      width: node.size[0] * ds.scale,
      height: (node.size[1] + title) * ds.scale,
    };
  }, nodeType);
}

/** Waits until the editor canvas (a DOM widget, moved on the next frame) lies inside the node's box. */
function waitEditorPlaced(page, box) {
  return waitFor(
    page,
    (b) => {
      const r = window.app.graph.getNodeById(b.id).diffstylerEditor.canvas.getBoundingClientRect();
      const insideX = r.left >= b.x - 1 && r.right <= b.x + b.width + 1;
      return r.width > 50 && insideX && r.top >= b.y && r.bottom <= b.y + b.height + 1;
    },
    box,
    "the editor canvas to move into the node",
  );
}

function editorState(page, nodeId) {
  return page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    const ed = node.diffstylerEditor;
    const w = (name) => node.widgets.find((x) => x.name === name)?.value;
    return {
      hasEditor: !!ed,
      mode: w("mode"),
      points: w("points"),
      boxes: w("boxes"),
      prompts: ed?.prompts(),
      sources: ed?.sources(),
      rect: ed?.imageRect(),
      lastRun: ed?.lastRun ?? null,
      // the frontend's own image preview under the widgets (the editor canvas already shows the run)
      nodeImages: (node.imgs ?? []).length,
      nodeOutputKeys: Object.keys(window.app.nodeOutputs?.[String(id)] ?? {}),
    };
  }, nodeId);
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
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error("the queued prompt did not finish in time");
}

async function queueAndScreenshot(page, job) {
  const workflow = JSON.parse(fs.readFileSync(job.path, "utf8"));
  await loadWorkflow(page, workflow, path.basename(job.path));
  result.closedDialogs = await closeDialogs(page);
  const box = await showNode(page, "DiffStylerFastSAMMask");
  await waitEditorPlaced(page, box);
  await waitFor(
    page,
    (id) => {
      const ed = window.app.graph.getNodeById(id)?.diffstylerEditor;
      return ed && ed.sources().baseState === "loaded" && ed.imageRect() !== null;
    },
    box.id,
    "the editor to show the connected LoadImage picture",
  );
  step("editor shows the image");
  fs.mkdirSync(path.dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot.replace(/\.png$/, "_before_click.png") });
  const run = { node: box, clicks: [] };
  result.pending = run;
  run.before = await editorState(page, box.id);
  for (const click of job.click) {
    const at = await page.evaluate(
      ({ id, x, y }) => window.app.graph.getNodeById(id).diffstylerEditor.imageToClient(x, y),
      { id: box.id, x: click.x, y: click.y },
    );
    const hit = await page.evaluate(({ x, y }) => {
      const el = document.elementFromPoint(x, y);
      if (!el) return null;
      const testid = el.dataset?.testid ? `[${el.dataset.testid}]` : "";
      return `${el.tagName.toLowerCase()}${testid}.${el.className}`;
    }, at);
    if (click.negative) await page.keyboard.down("Shift");
    await page.mouse.click(at.x, at.y);
    if (click.negative) await page.keyboard.up("Shift");
    await page.waitForTimeout(150);
    const state = await editorState(page, box.id);
    run.clicks.push({ target: click, client: at, hit, points: state.points, mode: state.mode });
  }
  step("clicked the editor");
  const before = Object.keys(await page.evaluate(async () => (await fetch("/history")).json()));
  run.queued = await page.evaluate(async () => {
    await window.app.queuePrompt(0, 1);
    return true;
  });
  run.history = await waitHistory(page, before);
  step("prompt finished", { status: run.history.status?.status_str });
  const saveBox = await showNode(page, "SaveImage");
  const save = saveBox.id;
  run.diagnostics = async () => ({
    editor: await editorState(page, box.id),
    save: await page.evaluate((id) => {
      const node = window.app.graph.getNodeById(id);
      return {
        imgs: (node.imgs ?? []).map((i) => [i.src, i.complete, i.naturalWidth]),
        nodeOutputs: window.app.nodeOutputs?.[String(id)] ?? null,
        keys: Object.keys(window.app.nodeOutputs ?? {}),
      };
    }, save),
  });
  await waitFor(
    page,
    (id) => {
      const imgs = window.app.graph.getNodeById(id).imgs ?? [];
      return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    },
    save,
    "the output image on the Save Image node",
  );
  run.saveImages = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    return (node.imgs ?? []).map((i) => ({ src: i.src, width: i.naturalWidth, height: i.naturalHeight }));
  }, save);
  fs.mkdirSync(path.dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot.replace(/\.png$/, "_output.png") });
  step("output image shown");
  await showNode(page, "DiffStylerFastSAMMask");
  await waitEditorPlaced(page, box);
  await waitFor(
    page,
    (id) => {
      const ed = window.app.graph.getNodeById(id).diffstylerEditor;
      return ed.lastRun && ed.sources().overlayState === "loaded";
    },
    box.id,
    "the mask overlay in the editor",
  );
  await page.waitForTimeout(300);
  run.after = await editorState(page, box.id);
  run.canvasSpread = await canvasSpread(page, box.id);
  const clip = { x: Math.max(0, box.x - 10), y: Math.max(0, box.y - 10), width: box.width + 20 };
  clip.height = box.height + 20;
  await page.screenshot({ path: args.screenshot, clip });
  run.screenshot = args.screenshot;
  step("screenshot");
  return run;
}

async function main() {
  const context = await chromium.launchPersistentContext(args["user-data-dir"], {
    executablePath: args.chromium || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1600, height: 1000 },
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (m) => {
      if (["error", "warning", "assert"].includes(m.type())) {
        result.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? "" });
      }
    });
    page.on("pageerror", (e) => result.pageErrors.push({ message: e.message, stack: e.stack ?? "" }));
    page.on("requestfailed", (r) => result.failedRequests.push({ url: r.url(), error: r.failure()?.errorText }));
    page.on("response", (r) => {
      if (r.status() >= 400) result.failedRequests.push({ url: r.url(), status: r.status() });
    });
    // A returning user: no first-run template browser over the canvas.
    const settings = await fetch(`${args.url}/api/settings`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ "Comfy.TutorialCompleted": true }),
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
    result.frontendVersion = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    for (const job of jobs.load) {
      const workflow = JSON.parse(fs.readFileSync(job.path, "utf8"));
      result.workflows[job.name] = await loadWorkflow(page, workflow, job.name);
      step(`loaded ${job.name}`);
    }
    if (jobs.queue) result.run = await queueAndScreenshot(page, jobs.queue);
    delete result.pending;
  } catch (e) {
    result.error = String(e?.stack ?? e);
    if (result.pending?.diagnostics) result.diagnostics = await result.pending.diagnostics().catch((x) => String(x));
  } finally {
    result.ms = Date.now() - started;
    fs.writeFileSync(args.out, JSON.stringify(result, null, 1));
    await context.close();
  }
}

await main();
