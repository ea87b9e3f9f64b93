// Unit tests for js/lib/render.js against a recording 2D-context stub. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { fitImageRect } from "../../js/lib/geometry.js";
import { COLORS, OVERLAY_ALPHA, POINT_RADIUS_PX, renderFrame } from "../../js/lib/render.js";

/** A CanvasRenderingContext2D stand-in that records calls together with the style they ran with. */
function recordingContext() {
  const calls = [];
  const state = { fillStyle: "", strokeStyle: "", globalAlpha: 1, lineWidth: 1, font: "", textAlign: "", textBaseline: "" };
  const ctx = { calls, ...state };
  const snapshot = () => ({ fillStyle: ctx.fillStyle, strokeStyle: ctx.strokeStyle, globalAlpha: ctx.globalAlpha });
  for (const name of ["setTransform", "fillRect", "strokeRect", "drawImage", "beginPath", "arc", "fill", "stroke",
    "fillText", "strokeText", "save", "restore", "setLineDash"]) {
    ctx[name] = (...args) => calls.push({ name, args, ...snapshot() });
  }
  return ctx;
}

const of = (ctx, name) => ctx.calls.filter((c) => c.name === name);

describe("renderFrame", () => {
  test("without an image it draws only the background and the centred hint", () => {
    const ctx = recordingContext();
    renderFrame(ctx, { width: 300, height: 200, base: null, rect: null, hint: "Run once" });
    assert.deepEqual(of(ctx, "fillRect")[0].args, [0, 0, 300, 200]);
    assert.equal(of(ctx, "fillRect")[0].fillStyle, COLORS.background);
    const text = of(ctx, "fillText");
    assert.equal(text.length, 1);
    assert.deepEqual(text[0].args.slice(0, 3), ["Run once", 150, 100]);
    assert.equal(of(ctx, "drawImage").length, 0);
    assert.equal(of(ctx, "arc").length, 0);
  });

  test("draws image, overlay, boxes at pixel edges, points at pixel centres in their colours", () => {
    const ctx = recordingContext();
    const base = { id: "base" };
    const overlay = { id: "mask" };
    const rect = fitImageRect(100, 50, 200, 200); // scale 2, y offset 50
    renderFrame(ctx, {
      width: 200,
      height: 200,
      dpr: 2,
      base,
      overlay,
      rect,
      points: [
        { x: 10, y: 5, label: 1 },
        { x: 0, y: 0, label: 0 },
      ],
      boxes: [[10, 20, 30, 40]],
      footer: "help",
    });
    assert.deepEqual(of(ctx, "setTransform")[0].args, [2, 0, 0, 2, 0, 0]);
    const images = of(ctx, "drawImage");
    assert.deepEqual(
      images.map((c) => [c.args[0].id, ...c.args.slice(1), c.globalAlpha]),
      [
        ["base", 0, 50, 200, 100, 1],
        ["mask", 0, 50, 200, 100, OVERLAY_ALPHA],
      ],
    );
    const box = of(ctx, "strokeRect")[0];
    assert.deepEqual(box.args, [20, 90, 40, 40]);
    assert.equal(box.strokeStyle, COLORS.box);
    const arcs = of(ctx, "arc").map((c) => c.args.slice(0, 3));
    assert.deepEqual(arcs, [
      [21, 61, POINT_RADIUS_PX],
      [1, 51, POINT_RADIUS_PX],
    ]);
    assert.deepEqual(
      of(ctx, "fill").map((c) => c.fillStyle),
      [COLORS.positive, COLORS.negative],
    );
    assert.ok(of(ctx, "fillText").some((c) => c.args[0] === "help" && c.fillStyle === COLORS.text));
  });

  test("a live drag is drawn dashed, an error footer in the error colour, no overlay label without overlay", () => {
    const ctx = recordingContext();
    const rect = fitImageRect(10, 10, 100, 100);
    renderFrame(ctx, {
      width: 100,
      height: 100,
      base: {},
      rect,
      drag: { start: { x: 50, y: 60 }, current: { x: 10, y: 20 } },
      footer: "points: invalid JSON",
      footerIsError: true,
    });
    assert.deepEqual(of(ctx, "setLineDash")[0].args, [[5, 4]]);
    const dragRect = of(ctx, "strokeRect")[0];
    assert.deepEqual(dragRect.args, [50, 60, -40, -40]);
    assert.equal(dragRect.strokeStyle, COLORS.drag);
    const texts = of(ctx, "fillText");
    assert.deepEqual(
      texts.map((c) => [c.args[0], c.fillStyle]),
      [["points: invalid JSON", COLORS.error]],
    );
  });
});
