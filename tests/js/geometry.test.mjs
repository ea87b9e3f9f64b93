// Unit tests for js/lib/geometry.js. Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  DRAG_THRESHOLD_PX,
  MIN_BOX_SIZE,
  addBox,
  addPoint,
  clampPixel,
  clearPrompts,
  clientToDisplay,
  displayToClient,
  displayToImage,
  displayToPixel,
  dragToBox,
  fitImageRect,
  imageToDisplay,
  isDrag,
  isInsideImage,
  normalizeBox,
  parseBoxes,
  parsePoints,
  pixelToDisplay,
  removeBoxAt,
  removeNearestPoint,
  serializeBoxes,
  serializePoints,
} from "../../js/lib/geometry.js";

const close = (actual, expected, eps = 1e-9) =>
  assert.ok(Math.abs(actual - expected) <= eps, `expected ${expected}, got ${actual}`);

describe("fitImageRect", () => {
  test("landscape image in a square area is letterboxed (bars above and below)", () => {
    const r = fitImageRect(1000, 500, 400, 400);
    assert.deepEqual(r, { x: 0, y: 100, width: 400, height: 200, scale: 0.4, imageWidth: 1000, imageHeight: 500 });
  });

  test("portrait image in a wide area is pillarboxed (bars left and right)", () => {
    const r = fitImageRect(300, 600, 500, 300);
    assert.equal(r.scale, 0.5);
    assert.equal(r.width, 150);
    assert.equal(r.height, 300);
    assert.equal(r.x, 175);
    assert.equal(r.y, 0);
  });

  test("small images are scaled up and padding is kept on every side", () => {
    const r = fitImageRect(10, 20, 220, 220, 10);
    assert.equal(r.scale, 10);
    assert.deepEqual([r.x, r.y, r.width, r.height], [60, 10, 100, 200]);
  });

  test("padding that would leave no room is ignored", () => {
    const r = fitImageRect(10, 10, 20, 20, 10);
    assert.deepEqual([r.x, r.y, r.scale], [0, 0, 2]);
  });

  test("rejects non-positive or non-finite sizes", () => {
    assert.throws(() => fitImageRect(0, 10, 100, 100), /imageWidth must be a positive finite number, got 0/);
    assert.throws(() => fitImageRect(10, 10, 100, NaN), RangeError);
    assert.throws(() => fitImageRect(10, -1, 100, 100), /imageHeight/);
  });
});

describe("display <-> image coordinates", () => {
  const cases = {
    landscape: fitImageRect(1920, 1080, 360, 300, 6),
    portrait: fitImageRect(768, 1344, 360, 300, 6),
  };

  for (const [name, rect] of Object.entries(cases)) {
    test(`${name}: continuous round trip image -> display -> image`, () => {
      for (const [ix, iy] of [
        [0, 0],
        [rect.imageWidth, rect.imageHeight],
        [123.25, 77.5],
        [rect.imageWidth / 3, rect.imageHeight / 7],
      ]) {
        const d = imageToDisplay(rect, ix, iy);
        const back = displayToImage(rect, d.x, d.y);
        close(back.x, ix, 1e-9);
        close(back.y, iy, 1e-9);
      }
    });

    test(`${name}: every pixel centre maps back to the same integer pixel`, () => {
      for (const [px, py] of [
        [0, 0],
        [rect.imageWidth - 1, rect.imageHeight - 1],
        [17, 301],
        [Math.floor(rect.imageWidth / 2), Math.floor(rect.imageHeight / 2)],
      ]) {
        const d = pixelToDisplay(rect, px, py);
        assert.ok(isInsideImage(rect, d.x, d.y));
        assert.deepEqual(displayToPixel(rect, d.x, d.y), { x: px, y: py });
      }
    });

    test(`${name}: image corners land on the drawn rect corners`, () => {
      const tl = imageToDisplay(rect, 0, 0);
      const br = imageToDisplay(rect, rect.imageWidth, rect.imageHeight);
      close(tl.x, rect.x);
      close(tl.y, rect.y);
      close(br.x, rect.x + rect.width);
      close(br.y, rect.y + rect.height);
    });
  }

  test("letterbox offsets are honoured: the bar is outside the image", () => {
    const rect = fitImageRect(1000, 500, 400, 400); // image spans y 100..300
    assert.equal(isInsideImage(rect, 200, 99), false);
    assert.equal(isInsideImage(rect, 200, 100), true);
    assert.equal(isInsideImage(rect, 400, 300), true);
    assert.equal(isInsideImage(rect, 400.5, 200), false);
    assert.equal(isInsideImage(null, 1, 1), false);
    assert.deepEqual(displayToImage(rect, 200, 200), { x: 500, y: 250 });
  });

  test("client <-> display undoes an on-screen zoom (CSS transform)", () => {
    const bounds = { left: 100, top: 50, width: 720, height: 600 }; // a 360x300 canvas shown at 2x
    assert.deepEqual(clientToDisplay(bounds, 360, 300, 100, 50), { x: 0, y: 0 });
    assert.deepEqual(clientToDisplay(bounds, 360, 300, 460, 350), { x: 180, y: 150 });
    assert.deepEqual(displayToClient(bounds, 360, 300, 180, 150), { x: 460, y: 350 });
    assert.deepEqual(clientToDisplay({ left: 5, top: 5, width: 0, height: 0 }, 0, 0, 7, 9), { x: 2, y: 4 });
  });
});

describe("clampPixel", () => {
  test("floors to the pixel index and clamps into the image", () => {
    assert.deepEqual(clampPixel(10.99, 0.01, 64, 32), { x: 10, y: 0 });
    assert.deepEqual(clampPixel(-3.2, -0.5, 64, 32), { x: 0, y: 0 });
    assert.deepEqual(clampPixel(64, 32, 64, 32), { x: 63, y: 31 });
    assert.deepEqual(clampPixel(1e9, 31.999, 64, 32), { x: 63, y: 31 });
  });

  test("displayToPixel clamps clicks on the rect's far edge and outside it", () => {
    const rect = fitImageRect(100, 50, 200, 200); // scale 2, y offset 50
    assert.deepEqual(displayToPixel(rect, 200, 150), { x: 99, y: 49 });
    assert.deepEqual(displayToPixel(rect, -20, 0), { x: 0, y: 0 });
    assert.deepEqual(displayToPixel(rect, 41, 61), { x: 20, y: 5 });
  });
});

describe("boxes from drags", () => {
  const corners = [
    ["top-left to bottom-right", [10, 20], [110, 70]],
    ["bottom-right to top-left", [110, 70], [10, 20]],
    ["top-right to bottom-left", [110, 20], [10, 70]],
    ["bottom-left to top-right", [10, 70], [110, 20]],
  ];
  for (const [name, a, b] of corners) {
    test(`normalizeBox: ${name}`, () => {
      assert.deepEqual(normalizeBox(a[0], a[1], b[0], b[1], 200, 100), [10, 20, 110, 70]);
    });
  }

  test("normalizeBox rounds to pixel edges and clamps to 0..W, 0..H", () => {
    assert.deepEqual(normalizeBox(-15, 10.4, 250.2, 10.6 + 50, 200, 100), [0, 10, 200, 61]);
    assert.deepEqual(normalizeBox(190, -5, 500, 500, 200, 100), [190, 0, 200, 100]);
  });

  test("normalizeBox returns null below the minimum size, also after clamping", () => {
    assert.equal(normalizeBox(10, 10, 11, 50, 200, 100), null); // 1 px wide < MIN_BOX_SIZE
    assert.equal(MIN_BOX_SIZE, 2);
    assert.deepEqual(normalizeBox(10, 10, 12, 50, 200, 100), [10, 10, 12, 50]);
    assert.equal(normalizeBox(300, 10, 400, 50, 200, 100), null); // entirely right of the image
    assert.equal(normalizeBox(10, 10, 30, 50, 200, 100, 25), null);
    assert.deepEqual(normalizeBox(10, 10, 11, 11, 200, 100, 0), [10, 10, 11, 11]); // at least 1 px
  });

  test("dragToBox works in display coordinates of a letterboxed rect, any direction", () => {
    const rect = fitImageRect(400, 200, 200, 200); // scale 0.5, image spans display y 50..150
    const expected = [40, 20, 200, 120];
    const a = { x: 20, y: 60 };
    const b = { x: 100, y: 110 };
    assert.deepEqual(dragToBox(rect, a, b), expected);
    assert.deepEqual(dragToBox(rect, b, a), expected);
    assert.deepEqual(dragToBox(rect, { x: a.x, y: b.y }, { x: b.x, y: a.y }), expected);
    assert.deepEqual(dragToBox(rect, { x: b.x, y: a.y }, { x: a.x, y: b.y }), expected);
  });

  test("dragToBox clamps a drag that leaves the image through the letterbox bar", () => {
    const rect = fitImageRect(400, 200, 200, 200);
    assert.deepEqual(dragToBox(rect, { x: 150, y: 100 }, { x: 250, y: 0 }), [300, 0, 400, 100]);
    assert.equal(dragToBox(rect, { x: 10, y: 0 }, { x: 100, y: 40 }), null); // only in the top bar
  });

  test("isDrag uses the threshold in display pixels", () => {
    assert.equal(DRAG_THRESHOLD_PX, 4);
    assert.equal(isDrag({ x: 0, y: 0 }, { x: 3, y: 2 }), false);
    assert.equal(isDrag({ x: 0, y: 0 }, { x: 4, y: 0 }), false);
    assert.equal(isDrag({ x: 0, y: 0 }, { x: 3, y: 3 }), true);
    assert.equal(isDrag({ x: 0, y: 0 }, { x: 0, y: 5 }, 10), false);
  });
});

describe("points JSON", () => {
  test("empty and whitespace text, null and undefined parse to []", () => {
    assert.deepEqual(parsePoints(""), []);
    assert.deepEqual(parsePoints("  \n "), []);
    assert.deepEqual(parsePoints(undefined), []);
    assert.deepEqual(parsePoints("[]"), []);
  });

  test("the label-less form means positive points", () => {
    assert.deepEqual(parsePoints('[{"x": 5, "y": 6}, {"x": 7, "y": 8, "label": 0}]'), [
      { x: 5, y: 6, label: 1 },
      { x: 7, y: 8, label: 0 },
    ]);
  });

  test("coordinates are rounded to integers", () => {
    assert.deepEqual(parsePoints('[{"x": 5.6, "y": 6.4, "label": 1}]'), [{ x: 6, y: 6, label: 1 }]);
  });

  test("invalid JSON is a clear Error naming the widget and the expected form", () => {
    assert.throws(() => parsePoints("[{x: 1}]"), (e) => {
      assert.ok(e instanceof Error);
      assert.match(e.message, /^points: invalid JSON \(.+\); expected a list like \[\{"x": 120, "y": 80, "label": 1\}\]$/);
      assert.ok(e.cause instanceof SyntaxError);
      return true;
    });
  });

  test("malformed items are rejected with the item index", () => {
    assert.throws(() => parsePoints('{"x": 1, "y": 2}'), /points: expected a JSON list .*, got object/);
    assert.throws(() => parsePoints("null"), /got null/);
    assert.throws(() => parsePoints('[{"x": 1, "y": 2}, [3, 4]]'), /points: item 1 must be an object/);
    assert.throws(() => parsePoints('[{"x": "1", "y": 2}]'), /item 0 needs numeric "x" and "y"/);
    assert.throws(() => parsePoints('[{"x": 1, "y": 2, "label": 2}]'), /item 0 has label 2; use 1 \(positive\) or 0/);
    assert.throws(() => parsePoints(42), TypeError);
  });

  test("serialisation is canonical (labels written) and round-trips", () => {
    const points = [
      { x: 1, y: 2, label: 1 },
      { x: 30, y: 40, label: 0 },
    ];
    const text = serializePoints(points);
    assert.equal(text, '[\n  {"x":1,"y":2,"label":1},\n  {"x":30,"y":40,"label":0}\n]');
    assert.deepEqual(parsePoints(text), points);
    assert.deepEqual(JSON.parse(text), points);
    assert.equal(serializePoints([]), "[]");
    assert.equal(serializePoints(parsePoints('[{"x": 3, "y": 4}]')), '[\n  {"x":3,"y":4,"label":1}\n]');
  });
});

describe("boxes JSON", () => {
  test("parses, rounds and round-trips", () => {
    assert.deepEqual(parseBoxes(""), []);
    assert.deepEqual(parseBoxes("[[1, 2, 30.4, 40.6]]"), [[1, 2, 30, 41]]);
    const boxes = [
      [0, 0, 10, 10],
      [5, 6, 70, 80],
    ];
    const text = serializeBoxes(boxes);
    assert.equal(text, "[\n  [0,0,10,10],\n  [5,6,70,80]\n]");
    assert.deepEqual(parseBoxes(text), boxes);
    assert.equal(serializeBoxes([]), "[]");
  });

  test("invalid JSON and malformed boxes are clear Errors", () => {
    assert.throws(() => parseBoxes("[[1,2,3,4]"), /^Error: boxes: invalid JSON \(.+\); expected a list like \[\[10, 20, 200, 180\]\]$/);
    assert.throws(() => parseBoxes("[[1, 2, 3]]"), /boxes: item 0 must be 4 numbers \[x0, y0, x1, y1\], got \[1,2,3\]/);
    assert.throws(() => parseBoxes('[[1, 2, 3, "4"]]'), /item 0 must be 4 numbers/);
    assert.throws(() => parseBoxes("[[0, 0, 5, 5], [10, 2, 3, 4]]"), /boxes: item 1 \[10,2,3,4\] needs x0 < x1/);
    assert.throws(() => parseBoxes("[[1, 2, 1, 4]]"), /needs x0 < x1 and y0 < y1/);
  });
});

describe("editing lists", () => {
  test("addPoint appends without mutating and labels by sign", () => {
    const start = [{ x: 1, y: 1, label: 1 }];
    const pos = addPoint(start, 4.4, 5.6);
    const neg = addPoint(pos, 7, 8, true);
    assert.equal(start.length, 1);
    assert.deepEqual(neg, [
      { x: 1, y: 1, label: 1 },
      { x: 4, y: 6, label: 1 },
      { x: 7, y: 8, label: 0 },
    ]);
  });

  test("addBox appends a copy", () => {
    const box = [1, 2, 3, 4];
    const out = addBox([], box);
    box[0] = 99;
    assert.deepEqual(out, [[1, 2, 3, 4]]);
  });

  test("removeNearestPoint removes the nearest within the radius only", () => {
    const pts = [
      { x: 10, y: 10, label: 1 },
      { x: 20, y: 10, label: 0 },
      { x: 100, y: 100, label: 1 },
    ];
    const r = removeNearestPoint(pts, 17, 11, 5);
    assert.equal(r.index, 1);
    assert.deepEqual(r.removed, { x: 20, y: 10, label: 0 });
    assert.deepEqual(r.points, [pts[0], pts[2]]);
    assert.equal(pts.length, 3);

    const none = removeNearestPoint(pts, 50, 50, 5);
    assert.equal(none.removed, null);
    assert.equal(none.index, -1);
    assert.deepEqual(none.points, pts);

    assert.equal(removeNearestPoint(pts, 13, 14, 5).index, 0); // distance exactly 5 counts
    assert.equal(removeNearestPoint(pts, 13, 14, 4.99).index, -1);
    assert.equal(removeNearestPoint([], 0, 0, 10).index, -1);
  });

  test("removeNearestPoint prefers the point added last on a tie", () => {
    const pts = [
      { x: 5, y: 5, label: 1 },
      { x: 5, y: 5, label: 0 },
    ];
    assert.equal(removeNearestPoint(pts, 5, 5, 1).index, 1);
  });

  test("removeBoxAt removes the last box containing the point", () => {
    const boxes = [
      [0, 0, 50, 50],
      [10, 10, 30, 30],
    ];
    assert.deepEqual(removeBoxAt(boxes, 20, 20), { boxes: [[0, 0, 50, 50]], removed: [10, 10, 30, 30], index: 1 });
    assert.equal(removeBoxAt(boxes, 40, 40).index, 0);
    assert.equal(removeBoxAt(boxes, 50, 50).index, 0); // edges included
    assert.equal(removeBoxAt(boxes, 60, 5).removed, null);
  });

  test("clearPrompts gives empty lists and their widget text", () => {
    const c = clearPrompts();
    assert.deepEqual(c, { points: [], boxes: [], pointsText: "[]", boxesText: "[]" });
    assert.deepEqual(parsePoints(c.pointsText), []);
    assert.deepEqual(parseBoxes(c.boxesText), []);
  });
});
