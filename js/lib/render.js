// Draws one frame of the FastSAM point/box editor onto a 2D context.
// Only calls methods of the context it is given (no DOM, no frontend imports), so it runs against a
// recording stub under `node --test`.
import { imageToDisplay, pixelToDisplay } from "./geometry.js";

/** Marker and outline colours: positive points green, negative red, boxes yellow, the live drag blue. */
export const COLORS = Object.freeze({
  background: "#1b1b1b",
  text: "#bbbbbb",
  error: "#ff6b6b",
  positive: "#22c55e",
  negative: "#ef4444",
  box: "#facc15",
  drag: "#38bdf8",
});

/** Opacity of the last run's mask preview drawn over the input image. */
export const OVERLAY_ALPHA = 0.75;

/** Point marker radius in display pixels. */
export const POINT_RADIUS_PX = 5;

/**
 * Everything one frame shows. Sizes and positions in display (canvas CSS) pixels.
 * @typedef {object} EditorFrame
 * @property {number} width display width
 * @property {number} height display height
 * @property {number} [dpr=1] device pixel ratio of the backing store
 * @property {CanvasImageSource | null} base the input image, null when none is loaded
 * @property {CanvasImageSource | null} [overlay] the last run's preview (mask over the input)
 * @property {import("./geometry.js").ImageRect | null} rect where `base` is drawn
 * @property {import("./geometry.js").PromptPoint[]} [points]
 * @property {import("./geometry.js").PromptBox[]} [boxes]
 * @property {{start: {x: number, y: number}, current: {x: number, y: number}} | null} [drag] live box drag
 * @property {string} [hint] centred text shown when there is no image
 * @property {string} [footer] one line at the bottom (help, or an error)
 * @property {boolean} [footerIsError] draw the footer in the error colour
 */

/**
 * Draws a text line with a dark halo so it stays readable over any image.
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 * @param {number} x
 * @param {number} y
 * @param {string} color
 * @param {CanvasTextAlign} align
 * @param {number} maxWidth squeezed to fit, at least 10 px
 */
export function drawLabel(ctx, text, x, y, color, align, maxWidth) {
  const max = Math.max(maxWidth, 10);
  ctx.font = "12px sans-serif";
  ctx.textAlign = align;
  ctx.textBaseline = "middle";
  ctx.lineWidth = 3;
  ctx.strokeStyle = "rgba(0,0,0,0.6)";
  ctx.strokeText(text, x, y, max);
  ctx.fillStyle = color;
  ctx.fillText(text, x, y, max);
}

/**
 * Draws boxes (outlined, at pixel edges), the live drag (dashed) and points (filled, at pixel centres).
 * @param {CanvasRenderingContext2D} ctx
 * @param {import("./geometry.js").ImageRect} rect
 * @param {import("./geometry.js").PromptPoint[]} points
 * @param {import("./geometry.js").PromptBox[]} boxes
 * @param {EditorFrame["drag"]} [drag]
 */
export function drawPrompts(ctx, rect, points, boxes, drag = null) {
  ctx.lineWidth = 2;
  ctx.strokeStyle = COLORS.box;
  for (const [x0, y0, x1, y1] of boxes) {
    const a = imageToDisplay(rect, x0, y0);
    const b = imageToDisplay(rect, x1, y1);
    ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
  }
  if (drag) {
    ctx.save();
    ctx.setLineDash([5, 4]);
    ctx.strokeStyle = COLORS.drag;
    ctx.strokeRect(drag.start.x, drag.start.y, drag.current.x - drag.start.x, drag.current.y - drag.start.y);
    ctx.restore();
  }
  for (const p of points) {
    const d = pixelToDisplay(rect, p.x, p.y);
    ctx.beginPath();
    ctx.arc(d.x, d.y, POINT_RADIUS_PX, 0, Math.PI * 2);
    ctx.fillStyle = p.label ? COLORS.positive : COLORS.negative;
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
  }
}

/**
 * Draws a whole frame: background, then either the hint text (no image) or the image, the overlay,
 * the prompts and the footer.
 * @param {CanvasRenderingContext2D} ctx
 * @param {EditorFrame} frame
 */
export function renderFrame(ctx, frame) {
  const { width: w, height: h, dpr = 1 } = frame;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.globalAlpha = 1;
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, w, h);
  const rect = frame.rect;
  if (!frame.base || !rect) {
    drawLabel(ctx, frame.hint ?? "", w / 2, h / 2, COLORS.text, "center", w - 16);
    return;
  }
  ctx.drawImage(frame.base, rect.x, rect.y, rect.width, rect.height);
  if (frame.overlay) {
    ctx.globalAlpha = OVERLAY_ALPHA;
    ctx.drawImage(frame.overlay, rect.x, rect.y, rect.width, rect.height);
    ctx.globalAlpha = 1;
    drawLabel(ctx, "mask: last run", rect.x + 4, rect.y + 12, COLORS.text, "left", rect.width - 8);
  }
  drawPrompts(ctx, rect, frame.points ?? [], frame.boxes ?? [], frame.drag ?? null);
  if (frame.footer) {
    drawLabel(ctx, frame.footer, w / 2, h - 8, frame.footerIsError ? COLORS.error : COLORS.text, "center", w - 8);
  }
}
