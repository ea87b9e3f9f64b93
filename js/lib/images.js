// Pure helpers for images the editor shows: ComfyUI image references ({filename, subfolder, type}),
// `/view` routes, which image to draw, and a small load cache. No imports and no DOM access: runs in the
// browser and under `node --test` (the cache takes an image factory).

/**
 * A file ComfyUI can serve from `/view`, as found in node UI outputs (`output.images`).
 * @typedef {{filename: string, subfolder: string, type: string}} ImageRef
 */

const ANNOTATION = /\s*\[(input|output|temp)\]$/;

/**
 * Whether a value looks like an image reference from a node's UI output.
 * @param {unknown} ref
 * @returns {boolean}
 */
export function isImageRef(ref) {
  return (
    ref !== null &&
    typeof ref === "object" &&
    typeof (/** @type {any} */ (ref).filename) === "string" &&
    /** @type {any} */ (ref).filename !== ""
  );
}

/**
 * Turns a LoadImage `image` widget value into a reference. The value may carry a subfolder
 * ("sub/name.png") and a ComfyUI annotation ("name.png [output]"); without one the type is "input".
 * @param {unknown} value the widget value
 * @returns {ImageRef | null} null for an empty or non-string value
 */
export function loadImageValueToRef(value) {
  if (typeof value !== "string") return null;
  let name = value.trim();
  let type = "input";
  const m = name.match(ANNOTATION);
  if (m) {
    type = m[1];
    name = name.slice(0, m.index).trim();
  }
  name = name.replace(/\\/g, "/");
  const cut = name.lastIndexOf("/");
  const filename = name.slice(cut + 1);
  if (!filename) return null;
  return { filename, subfolder: cut >= 0 ? name.slice(0, cut) : "", type };
}

/** Node types whose `image` widget names a file that `/view` serves. */
export const LOADER_NODES = Object.freeze(["LoadImage", "LoadImageOutput"]);

/**
 * The node directly connected to input `slot` of `node`, or null. Uses the node's connectivity API
 * (`isInputConnected` / `getInputLink`, frontends 1.35 to 1.58+); reading `input.link` is deprecated since
 * 1.58 and is only the fallback for nodes without that API.
 * @param {any} node
 * @param {number} slot
 * @returns {any} the upstream node, or null
 */
function upstreamNode(node, slot) {
  if (typeof node.isInputConnected === "function" && typeof node.getInputLink === "function") {
    if (!node.isInputConnected(slot)) return null;
    const link = node.getInputLink(slot);
    return link == null ? null : (node.graph.getNodeById?.(link.origin_id) ?? null);
  }
  if (node.inputs[slot].link == null) return null;
  return node.getInputNode?.(slot) ?? null;
}

/**
 * The `image` widget value of a loader node (LOADER_NODES) connected directly to `node`'s input
 * `inputName`, or null. Works on any LiteGraph-like node: `isInputConnected(i)` / `getInputLink(i)` and
 * `graph.getNodeById`, else (older API) `inputs[i].link` and `getInputNode(i)`; and `widgets`.
 * @param {any} node
 * @param {string} inputName
 * @returns {unknown} the widget value, or null when nothing (or another node type) is connected
 */
export function connectedLoaderValue(node, inputName) {
  const slot = node?.inputs?.findIndex((input) => input?.name === inputName) ?? -1;
  if (slot < 0 || !node.graph) return null;
  const upstream = upstreamNode(node, slot);
  const kind = upstream?.constructor?.comfyClass ?? upstream?.comfyClass ?? upstream?.type;
  if (!LOADER_NODES.includes(kind)) return null;
  return upstream.widgets?.find((w) => w.name === "image")?.value ?? null;
}

/**
 * The `/view` route for a reference (to pass to `api.apiURL`), query built with URLSearchParams.
 * @param {ImageRef} ref
 * @returns {string} e.g. "/view?filename=a.png&subfolder=sub&type=input"
 */
export function viewRoute(ref) {
  const params = new URLSearchParams({
    filename: ref.filename,
    subfolder: ref.subfolder ?? "",
    type: ref.type || "output",
  });
  return `/view?${params.toString()}`;
}

/**
 * What a run left behind, as `/view` URLs.
 * @typedef {{sourceUrl: string | null, previewUrl: string | null, upstreamUrl: string | null}} RunImages
 * `upstreamUrl` is the directly connected LoadImage file at the time of the run (null if none).
 */

/**
 * Picks what the editor draws. The last run's input image, with its mask preview as overlay, wins unless
 * the directly connected LoadImage now points at another file than it did at that run; then (or without a
 * run) the LoadImage file is drawn, without overlay. A run with a preview but no source draws the preview.
 * @param {string | null} upstreamUrl `/view` URL of the connected LoadImage file, or null
 * @param {RunImages | null} lastRun
 * @returns {{base: string | null, overlay: string | null}}
 */
export function chooseSources(upstreamUrl, lastRun) {
  const run = lastRun;
  const runUsable = run && (run.sourceUrl || run.previewUrl);
  if (runUsable && (upstreamUrl === null || upstreamUrl === run.upstreamUrl)) {
    return run.sourceUrl
      ? { base: run.sourceUrl, overlay: run.previewUrl ?? null }
      : { base: run.previewUrl, overlay: null };
  }
  return { base: upstreamUrl ?? null, overlay: null };
}

/**
 * Loads images by URL once and remembers their state. `createImage` returns an object with `src`,
 * `naturalWidth`, `onload` and `onerror` (an `HTMLImageElement` in the browser); `onChange` runs when a
 * load finishes either way.
 */
export class ImageCache {
  /**
   * @param {() => HTMLImageElement} createImage
   * @param {() => void} onChange
   */
  constructor(createImage, onChange) {
    this.createImage = createImage;
    this.onChange = onChange;
    /** @type {Map<string, {img: HTMLImageElement, state: "loading" | "loaded" | "error"}>} */
    this.entries = new Map();
  }

  /**
   * @param {string | null} url
   * @returns {"none" | "loading" | "loaded" | "error"} "loading" also for a URL not requested yet
   */
  state(url) {
    return url ? (this.entries.get(url)?.state ?? "loading") : "none";
  }

  /**
   * The image once loaded, else null; the first call for a URL starts its load.
   * @param {string | null} url
   * @returns {HTMLImageElement | null}
   */
  get(url) {
    if (!url) return null;
    let entry = this.entries.get(url);
    if (!entry) {
      const img = this.createImage();
      const e = { img, state: /** @type {"loading" | "loaded" | "error"} */ ("loading") };
      img.onload = () => {
        e.state = img.naturalWidth > 0 ? "loaded" : "error";
        if (this.entries.get(url) === e) this.onChange();
      };
      img.onerror = () => {
        e.state = "error";
        if (this.entries.get(url) === e) this.onChange();
      };
      this.entries.set(url, e);
      img.src = url;
      entry = e;
    }
    return entry.state === "loaded" ? entry.img : null;
  }

  /**
   * Forgets every URL not in `keep`.
   * @param {Array<string | null>} keep
   */
  prune(keep) {
    for (const url of [...this.entries.keys()]) if (!keep.includes(url)) this.entries.delete(url);
  }

  clear() {
    this.entries.clear();
  }
}
