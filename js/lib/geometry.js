// Pure geometry and prompt-JSON helpers for the FastSAM point/box editor (js/fastsam_editor.js).
// No imports and no DOM access: this module runs unchanged in the browser and under `node --test`.
//
// Coordinate systems:
// - display: CSS pixels of the editor canvas, origin at its top-left corner.
// - image: continuous pixel coordinates of the input image, origin at its top-left corner;
//   pixel (i, j) covers [i, i+1) x [j, j+1).
// Conventions written to the widgets (what the Python node reads):
// - a point is a pixel index: integers 0..W-1 and 0..H-1 (the pixel under the cursor);
// - a box is pixel edges: integers 0..W and 0..H with x0 < x1 and y0 < y1.

/**
 * A prompt point in image pixels. `label` 1 = positive (foreground), 0 = negative (background).
 * @typedef {{x: number, y: number, label: 0 | 1}} PromptPoint
 */

/**
 * A prompt box `[x0, y0, x1, y1]` in image pixel edges, x0 < x1 and y0 < y1.
 * @typedef {[number, number, number, number]} PromptBox
 */

/**
 * Where an image is drawn inside a display area (letterboxed: aspect kept, centred).
 * `x`, `y`, `width`, `height` are display pixels; `scale` is display pixels per image pixel.
 * @typedef {{x: number, y: number, width: number, height: number, scale: number,
 *   imageWidth: number, imageHeight: number}} ImageRect
 */

/** A click that moves less than this many display pixels is a click, further is a box drag. */
export const DRAG_THRESHOLD_PX = 4;

/** Smallest box side, in image pixels, that a drag may produce. */
export const MIN_BOX_SIZE = 2;

/** Display radius, in display pixels, within which a removal click picks a point. */
export const REMOVE_RADIUS_PX = 10;

function checkPositive(name, value) {
  if (!Number.isFinite(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive finite number, got ${value}`);
  }
}

/**
 * Fits an image into a display area, keeping its aspect ratio and centring it (letterbox or pillarbox).
 * @param {number} imageWidth image width in pixels (> 0)
 * @param {number} imageHeight image height in pixels (> 0)
 * @param {number} areaWidth display area width (> 0)
 * @param {number} areaHeight display area height (> 0)
 * @param {number} [padding=0] display pixels kept free on every side (ignored if it leaves no room)
 * @returns {ImageRect}
 * @throws {RangeError} when a size is not a positive finite number
 */
export function fitImageRect(imageWidth, imageHeight, areaWidth, areaHeight, padding = 0) {
  checkPositive("imageWidth", imageWidth);
  checkPositive("imageHeight", imageHeight);
  checkPositive("areaWidth", areaWidth);
  checkPositive("areaHeight", areaHeight);
  const pad = padding > 0 && 2 * padding < Math.min(areaWidth, areaHeight) ? padding : 0;
  const innerW = areaWidth - 2 * pad;
  const innerH = areaHeight - 2 * pad;
  const scale = Math.min(innerW / imageWidth, innerH / imageHeight);
  const width = imageWidth * scale;
  const height = imageHeight * scale;
  return {
    x: pad + (innerW - width) / 2,
    y: pad + (innerH - height) / 2,
    width,
    height,
    scale,
    imageWidth,
    imageHeight,
  };
}

/**
 * Display coordinates -> continuous image coordinates (not clamped, not rounded).
 * @param {ImageRect} rect
 * @param {number} dx display x
 * @param {number} dy display y
 * @returns {{x: number, y: number}}
 */
export function displayToImage(rect, dx, dy) {
  return { x: (dx - rect.x) / rect.scale, y: (dy - rect.y) / rect.scale };
}

/**
 * Continuous image coordinates -> display coordinates. For a pixel index use `pixelToDisplay`.
 * @param {ImageRect} rect
 * @param {number} ix image x
 * @param {number} iy image y
 * @returns {{x: number, y: number}}
 */
export function imageToDisplay(rect, ix, iy) {
  return { x: rect.x + ix * rect.scale, y: rect.y + iy * rect.scale };
}

/**
 * Display position of the centre of pixel (px, py): where a point marker is drawn.
 * @param {ImageRect} rect
 * @param {number} px pixel column
 * @param {number} py pixel row
 * @returns {{x: number, y: number}}
 */
export function pixelToDisplay(rect, px, py) {
  return imageToDisplay(rect, px + 0.5, py + 0.5);
}

/**
 * Whether a display point lies on the drawn image (edges included).
 * @param {ImageRect | null | undefined} rect
 * @param {number} dx
 * @param {number} dy
 * @returns {boolean}
 */
export function isInsideImage(rect, dx, dy) {
  if (!rect) return false;
  return dx >= rect.x && dy >= rect.y && dx <= rect.x + rect.width && dy <= rect.y + rect.height;
}

/**
 * Continuous image coordinates -> the integer pixel that contains them, clamped into the image.
 * @param {number} x image x
 * @param {number} y image y
 * @param {number} imageWidth
 * @param {number} imageHeight
 * @returns {{x: number, y: number}} integers in 0..imageWidth-1, 0..imageHeight-1
 */
export function clampPixel(x, y, imageWidth, imageHeight) {
  return {
    x: Math.min(Math.max(Math.floor(x), 0), imageWidth - 1),
    y: Math.min(Math.max(Math.floor(y), 0), imageHeight - 1),
  };
}

/**
 * Display coordinates -> the integer image pixel under them, clamped into the image.
 * @param {ImageRect} rect
 * @param {number} dx
 * @param {number} dy
 * @returns {{x: number, y: number}}
 */
export function displayToPixel(rect, dx, dy) {
  const p = displayToImage(rect, dx, dy);
  return clampPixel(p.x, p.y, rect.imageWidth, rect.imageHeight);
}

/**
 * Client (viewport) coordinates -> display coordinates of an element whose layout size is
 * `layoutWidth` x `layoutHeight` but which appears on screen as `bounds` (getBoundingClientRect), e.g.
 * when a CSS transform zooms it with the graph.
 * @param {{left: number, top: number, width: number, height: number}} bounds on-screen box
 * @param {number} layoutWidth element width in its own CSS pixels (clientWidth)
 * @param {number} layoutHeight element height in its own CSS pixels (clientHeight)
 * @param {number} clientX
 * @param {number} clientY
 * @returns {{x: number, y: number}}
 */
export function clientToDisplay(bounds, layoutWidth, layoutHeight, clientX, clientY) {
  const sx = bounds.width > 0 ? layoutWidth / bounds.width : 1;
  const sy = bounds.height > 0 ? layoutHeight / bounds.height : 1;
  return { x: (clientX - bounds.left) * sx, y: (clientY - bounds.top) * sy };
}

/**
 * Inverse of `clientToDisplay`.
 * @param {{left: number, top: number, width: number, height: number}} bounds on-screen box
 * @param {number} layoutWidth
 * @param {number} layoutHeight
 * @param {number} dx display x
 * @param {number} dy display y
 * @returns {{x: number, y: number}} client coordinates
 */
export function displayToClient(bounds, layoutWidth, layoutHeight, dx, dy) {
  const sx = layoutWidth > 0 ? bounds.width / layoutWidth : 1;
  const sy = layoutHeight > 0 ? bounds.height / layoutHeight : 1;
  return { x: bounds.left + dx * sx, y: bounds.top + dy * sy };
}

/**
 * Whether a pointer moved far enough between press and release to count as a drag.
 * @param {{x: number, y: number}} start display coordinates at pointer down
 * @param {{x: number, y: number}} end display coordinates now
 * @param {number} [threshold=DRAG_THRESHOLD_PX]
 * @returns {boolean}
 */
export function isDrag(start, end, threshold = DRAG_THRESHOLD_PX) {
  return Math.hypot(end.x - start.x, end.y - start.y) > threshold;
}

/**
 * Two corners in continuous image coordinates (any order) -> an integer pixel-edge box clamped to the
 * image, or null when the clamped box is thinner than `minSize` on either side.
 * @param {number} ax first corner x
 * @param {number} ay first corner y
 * @param {number} bx opposite corner x
 * @param {number} by opposite corner y
 * @param {number} imageWidth
 * @param {number} imageHeight
 * @param {number} [minSize=MIN_BOX_SIZE] smallest side in image pixels (at least 1)
 * @returns {PromptBox | null}
 */
export function normalizeBox(ax, ay, bx, by, imageWidth, imageHeight, minSize = MIN_BOX_SIZE) {
  const edge = (v, max) => Math.min(Math.max(Math.round(v), 0), max);
  const x0 = edge(Math.min(ax, bx), imageWidth);
  const x1 = edge(Math.max(ax, bx), imageWidth);
  const y0 = edge(Math.min(ay, by), imageHeight);
  const y1 = edge(Math.max(ay, by), imageHeight);
  const min = Math.max(1, minSize);
  if (x1 - x0 < min || y1 - y0 < min) return null;
  return [x0, y0, x1, y1];
}

/**
 * A drag in display coordinates (any direction, may leave the image) -> a clamped image box or null.
 * @param {ImageRect} rect
 * @param {{x: number, y: number}} start display coordinates at pointer down
 * @param {{x: number, y: number}} end display coordinates at pointer up
 * @param {number} [minSize=MIN_BOX_SIZE] smallest side in image pixels
 * @returns {PromptBox | null}
 */
export function dragToBox(rect, start, end, minSize = MIN_BOX_SIZE) {
  const a = displayToImage(rect, start.x, start.y);
  const b = displayToImage(rect, end.x, end.y);
  return normalizeBox(a.x, a.y, b.x, b.y, rect.imageWidth, rect.imageHeight, minSize);
}

const POINTS_EXAMPLE = '[{"x": 120, "y": 80, "label": 1}]';
const BOXES_EXAMPLE = "[[10, 20, 200, 180]]";

function parseJsonList(text, widget, example) {
  if (text === undefined || text === null) return [];
  if (typeof text !== "string") {
    throw new TypeError(`${widget}: expected a JSON string, got ${typeof text}`);
  }
  if (text.trim() === "") return [];
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`${widget}: invalid JSON (${e.message}); expected a list like ${example}`, { cause: e });
  }
  if (!Array.isArray(data)) {
    throw new Error(`${widget}: expected a JSON list like ${example}, got ${data === null ? "null" : typeof data}`);
  }
  return data;
}

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/**
 * Parses the `points` widget text. Tolerant: empty text -> [], a missing `label` -> 1 (positive),
 * coordinates are rounded to integers.
 * @param {string} text JSON list of `{"x": int, "y": int, "label": 1 | 0}`
 * @returns {PromptPoint[]}
 * @throws {Error} naming the item and what is wrong, for invalid JSON or a malformed item
 */
export function parsePoints(text) {
  return parseJsonList(text, "points", POINTS_EXAMPLE).map((item, i) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      throw new Error(`points: item ${i} must be an object like {"x": 120, "y": 80, "label": 1}`);
    }
    if (!isNumber(item.x) || !isNumber(item.y)) {
      throw new Error(`points: item ${i} needs numeric "x" and "y", got ${JSON.stringify(item)}`);
    }
    let label = 1;
    if (item.label !== undefined) {
      if (item.label !== 0 && item.label !== 1) {
        throw new Error(`points: item ${i} has label ${JSON.stringify(item.label)}; use 1 (positive) or 0 (negative)`);
      }
      label = item.label;
    }
    return { x: Math.round(item.x), y: Math.round(item.y), label };
  });
}

/**
 * Serialises points to the canonical widget text: one `{"x","y","label"}` object per line.
 * @param {PromptPoint[]} points
 * @returns {string} "[]" when empty
 */
export function serializePoints(points) {
  if (!points.length) return "[]";
  const lines = points.map((p) => JSON.stringify({ x: Math.round(p.x), y: Math.round(p.y), label: p.label ? 1 : 0 }));
  return `[\n  ${lines.join(",\n  ")}\n]`;
}

/**
 * Parses the `boxes` widget text. Empty text -> []. Coordinates are rounded to integers.
 * @param {string} text JSON list of `[x0, y0, x1, y1]`
 * @returns {PromptBox[]}
 * @throws {Error} for invalid JSON, a box that is not 4 numbers, or one with x0 >= x1 or y0 >= y1
 */
export function parseBoxes(text) {
  return parseJsonList(text, "boxes", BOXES_EXAMPLE).map((item, i) => {
    if (!Array.isArray(item) || item.length !== 4 || !item.every(isNumber)) {
      throw new Error(`boxes: item ${i} must be 4 numbers [x0, y0, x1, y1], got ${JSON.stringify(item)}`);
    }
    const box = /** @type {PromptBox} */ (item.map((v) => Math.round(v)));
    if (box[0] >= box[2] || box[1] >= box[3]) {
      throw new Error(`boxes: item ${i} ${JSON.stringify(box)} needs x0 < x1 and y0 < y1; swap the corners`);
    }
    return box;
  });
}

/**
 * Serialises boxes to the canonical widget text: one `[x0, y0, x1, y1]` per line.
 * @param {PromptBox[]} boxes
 * @returns {string} "[]" when empty
 */
export function serializeBoxes(boxes) {
  if (!boxes.length) return "[]";
  return `[\n  ${boxes.map((b) => JSON.stringify(b.map((v) => Math.round(v)))).join(",\n  ")}\n]`;
}

/**
 * Returns a new list with a point appended.
 * @param {PromptPoint[]} points
 * @param {number} x pixel column
 * @param {number} y pixel row
 * @param {boolean} [negative=false] true for a negative (label 0) point
 * @returns {PromptPoint[]}
 */
export function addPoint(points, x, y, negative = false) {
  return [...points, { x: Math.round(x), y: Math.round(y), label: negative ? 0 : 1 }];
}

/**
 * Returns a new list with a box appended.
 * @param {PromptBox[]} boxes
 * @param {PromptBox} box
 * @returns {PromptBox[]}
 */
export function addBox(boxes, box) {
  return [...boxes, /** @type {PromptBox} */ ([...box])];
}

/**
 * Removes the point nearest to (x, y) if it lies within `radius` (inclusive). On a tie the point added
 * last (drawn on top) goes. All values in the same coordinate system (image pixels in the editor).
 * @param {PromptPoint[]} points
 * @param {number} x
 * @param {number} y
 * @param {number} radius
 * @returns {{points: PromptPoint[], removed: PromptPoint | null, index: number}} index -1 when none
 */
export function removeNearestPoint(points, x, y, radius) {
  let index = -1;
  let best = Infinity;
  points.forEach((p, i) => {
    const d = Math.hypot(p.x - x, p.y - y);
    if (d <= radius && d <= best) {
      best = d;
      index = i;
    }
  });
  if (index < 0) return { points: [...points], removed: null, index };
  return { points: points.filter((_, i) => i !== index), removed: points[index], index };
}

/**
 * Removes the box added last among those containing (x, y) (edges included).
 * @param {PromptBox[]} boxes
 * @param {number} x image x
 * @param {number} y image y
 * @returns {{boxes: PromptBox[], removed: PromptBox | null, index: number}} index -1 when none
 */
export function removeBoxAt(boxes, x, y) {
  for (let i = boxes.length - 1; i >= 0; i--) {
    const [x0, y0, x1, y1] = boxes[i];
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1) {
      return { boxes: boxes.filter((_, j) => j !== i), removed: boxes[i], index: i };
    }
  }
  return { boxes: [...boxes], removed: null, index: -1 };
}

/**
 * The empty prompt set, as lists and as the widget text to write.
 * @returns {{points: PromptPoint[], boxes: PromptBox[], pointsText: string, boxesText: string}}
 */
export function clearPrompts() {
  return { points: [], boxes: [], pointsText: "[]", boxesText: "[]" };
}
