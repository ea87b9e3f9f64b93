// Unit tests for js/lib/images.js. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ImageCache,
  LOADER_NODES,
  chooseSources,
  connectedLoaderValue,
  isImageRef,
  loadImageValueToRef,
  viewRoute,
} from "../../js/lib/images.js";

describe("image references", () => {
  test("LoadImage values: plain, with subfolder, annotated, Windows separators", () => {
    assert.deepEqual(loadImageValueToRef("cat.png"), { filename: "cat.png", subfolder: "", type: "input" });
    assert.deepEqual(loadImageValueToRef("pets/cats/cat.png"), {
      filename: "cat.png",
      subfolder: "pets/cats",
      type: "input",
    });
    assert.deepEqual(loadImageValueToRef("sub/x y.png [output]"), { filename: "x y.png", subfolder: "sub", type: "output" });
    assert.deepEqual(loadImageValueToRef("a.webp [temp]"), { filename: "a.webp", subfolder: "", type: "temp" });
    assert.deepEqual(loadImageValueToRef("d\\e.png"), { filename: "e.png", subfolder: "d", type: "input" });
  });

  test("empty or non-string LoadImage values give null", () => {
    for (const v of ["", "   ", "sub/", null, undefined, 3, ["a.png"]]) assert.equal(loadImageValueToRef(v), null, String(v));
  });

  test("viewRoute encodes with URLSearchParams", () => {
    assert.equal(
      viewRoute({ filename: "x y&z.png", subfolder: "a/b", type: "input" }),
      "/view?filename=x+y%26z.png&subfolder=a%2Fb&type=input",
    );
    assert.equal(viewRoute({ filename: "p.png", subfolder: "", type: "temp" }), "/view?filename=p.png&subfolder=&type=temp");
    const back = new URLSearchParams(viewRoute({ filename: "é #1.png", subfolder: "s", type: "output" }).split("?")[1]);
    assert.equal(back.get("filename"), "é #1.png");
  });

  test("isImageRef", () => {
    assert.equal(isImageRef({ filename: "a.png", subfolder: "", type: "temp" }), true);
    assert.equal(isImageRef({ filename: "" }), false);
    assert.equal(isImageRef(null), false);
    assert.equal(isImageRef("a.png"), false);
  });
});

describe("chooseSources", () => {
  const run = { sourceUrl: "/src.png", previewUrl: "/mask.png", upstreamUrl: "/load-a.png" };

  test("no run: the LoadImage file, no overlay; nothing connected: nothing", () => {
    assert.deepEqual(chooseSources("/load-a.png", null), { base: "/load-a.png", overlay: null });
    assert.deepEqual(chooseSources(null, null), { base: null, overlay: null });
  });

  test("the last run wins while the LoadImage is unchanged or absent", () => {
    assert.deepEqual(chooseSources("/load-a.png", run), { base: "/src.png", overlay: "/mask.png" });
    assert.deepEqual(chooseSources(null, run), { base: "/src.png", overlay: "/mask.png" });
  });

  test("a LoadImage changed since the run replaces the stale run images", () => {
    assert.deepEqual(chooseSources("/load-b.png", run), { base: "/load-b.png", overlay: null });
  });

  test("a run without source draws its preview; a run without images is ignored", () => {
    assert.deepEqual(chooseSources(null, { ...run, sourceUrl: null }), { base: "/mask.png", overlay: null });
    assert.deepEqual(chooseSources("/l.png", { sourceUrl: null, previewUrl: null, upstreamUrl: null }), {
      base: "/l.png",
      overlay: null,
    });
  });
});

describe("connectedLoaderValue", () => {
  const loader = (type, value) => ({ type, widgets: [{ name: "upload" }, { name: "image", value }] });
  // A node as frontend 1.58 has it: connectivity through isInputConnected/getInputLink; reading `input.link`
  // is deprecated there (the getter warns), so this fake throws on it.
  const slotWithoutLink = (name, link) => {
    const slot = { name };
    Object.defineProperty(slot, "link", {
      get() {
        throw new Error("input.link is deprecated: use node.isInputConnected(slot) / node.getInputLink(slot)");
      },
    });
    slot.linkId = link;
    return slot;
  };
  const node = (upstream, link = 7) => {
    const inputs = [slotWithoutLink("model", 1), slotWithoutLink("image", link)];
    const links = new Map([[1, { id: 1, origin_id: 90 }], [7, { id: 7, origin_id: 91 }]]);
    return {
      graph: { getNodeById: (id) => (id === 91 ? upstream : null) },
      inputs,
      isInputConnected: (slot) => inputs[slot].linkId != null,
      getInputLink: (slot) => links.get(inputs[slot].linkId) ?? null,
    };
  };
  // A node from a frontend without those methods (the fallback): `inputs[i].link` and getInputNode.
  const legacyNode = (upstream, link = 7) => ({
    graph: {},
    inputs: [{ name: "model", link: 1 }, { name: "image", link }],
    getInputNode: (slot) => (slot === 1 ? upstream : null),
  });

  test("reads the image widget of a directly connected LoadImage / LoadImageOutput without input.link", () => {
    assert.deepEqual(LOADER_NODES, ["LoadImage", "LoadImageOutput"]);
    assert.equal(connectedLoaderValue(node(loader("LoadImage", "sub/a.png")), "image"), "sub/a.png");
    assert.equal(connectedLoaderValue(node(loader("LoadImageOutput", "b.png [output]")), "image"), "b.png [output]");
    const classed = { constructor: { comfyClass: "LoadImage" }, type: "Renamed", widgets: [{ name: "image", value: "c.png" }] };
    assert.equal(connectedLoaderValue(node(classed), "image"), "c.png");
  });

  test("falls back to input.link and getInputNode where the node has no isInputConnected/getInputLink", () => {
    assert.equal(connectedLoaderValue(legacyNode(loader("LoadImage", "sub/a.png")), "image"), "sub/a.png");
    assert.equal(connectedLoaderValue(legacyNode(loader("LoadImage", "a.png"), null), "image"), null);
    assert.equal(connectedLoaderValue(legacyNode(loader("ImageScale", "a.png")), "image"), null);
  });

  test("null when unlinked, not a loader, or without a graph", () => {
    assert.equal(connectedLoaderValue(node(loader("LoadImage", "a.png"), null), "image"), null);
    assert.equal(connectedLoaderValue(node(loader("ImageScale", "a.png")), "image"), null);
    assert.equal(connectedLoaderValue(node(null), "image"), null);
    assert.equal(connectedLoaderValue(node(loader("LoadImage", "a.png"), 8), "image"), null, "a link id the graph lacks");
    assert.equal(connectedLoaderValue({ ...node(loader("LoadImage", "a.png")), graph: null }, "image"), null);
    assert.equal(connectedLoaderValue({ inputs: [] }, "image"), null);
    assert.equal(connectedLoaderValue(undefined, "image"), null);
  });
});

describe("ImageCache", () => {
  class FakeImage {
    constructor(log) {
      this.log = log;
      this.naturalWidth = 0;
    }
    set src(url) {
      this.log.push(url);
      this._src = url;
    }
    finish(ok, width = 64) {
      this.naturalWidth = ok ? width : 0;
      (ok ? this.onload : this.onerror)();
    }
  }

  test("loads once per URL, reports state and notifies on completion", () => {
    const requested = [];
    const made = [];
    let changes = 0;
    const cache = new ImageCache(
      () => {
        const img = new FakeImage(requested);
        made.push(img);
        return img;
      },
      () => changes++,
    );
    assert.equal(cache.state(null), "none");
    assert.equal(cache.get(null), null);
    assert.equal(cache.state("/a"), "loading");
    assert.equal(cache.get("/a"), null);
    assert.equal(cache.get("/a"), null);
    assert.deepEqual(requested, ["/a"]);
    made[0].finish(true);
    assert.equal(changes, 1);
    assert.equal(cache.state("/a"), "loaded");
    assert.equal(cache.get("/a"), made[0]);

    cache.get("/b");
    made[1].finish(false);
    assert.equal(cache.state("/b"), "error");
    assert.equal(cache.get("/b"), null);
    assert.equal(changes, 2);
  });

  test("prune forgets other URLs and late loads of forgotten URLs stay silent", () => {
    const made = [];
    let changes = 0;
    const cache = new ImageCache(
      () => {
        const img = new FakeImage([]);
        made.push(img);
        return img;
      },
      () => changes++,
    );
    cache.get("/keep");
    cache.get("/drop");
    cache.prune(["/keep", null]);
    assert.deepEqual([...cache.entries.keys()], ["/keep"]);
    made[1].finish(true);
    assert.equal(changes, 0);
    made[0].finish(true, 0); // decoded to nothing: an error, not a 0x0 image
    assert.equal(cache.state("/keep"), "error");
    cache.clear();
    assert.equal(cache.entries.size, 0);
  });
});
