#!/usr/bin/env node
// Opens a study in OHIF 3.13 (served by serve.js) with headless Chromium and looks at the jnsc SEG
// and SR the way a reader would, with OHIF's default prompts; takes screenshots into --out and
// checks what is on screen:
//
//   1. The SR in its own viewport: double-click the SR thumbnail, answer "No" to tracking. OHIF's
//      SR viewport draws the SR's content on its CT images, including each finding's TID 1410
//      axial group (long and short axis, 2-point POLYLINEs) labelled "L: <long> mm / W: ...".
//      Step ("<" ">") to the first finding's group (the one labelled with results.json's
//      findings[0].long_axis_mm, 2 decimals as OHIF writes it; its POLYLINE must be that long),
//      zoom in on it with the cornerstone camera (--zoom-mm: millimetres from the centre to the
//      top edge) and take the viewport (ohif-sr-axes.png). Then lay the SEG over that same
//      viewport and take it again (ohif-seg-and-axes.png, the main picture): OHIF 3.13's data
//      overlay menu offers no segmentation over an SR background, so the SEG display set is loaded
//      and added as a labelmap representation through OHIF's segmentationService, the way OHIF
//      hydrates a SEG. On both pictures the long axis must be drawn (an SVG line on the POLYLINE's
//      end points, and its colour along it in the pixels) with its label showing the long axis
//      (SVG text, and text pixels); on the second, the first finding's segment colour ("Nodule
//      <number>") must be around the long axis (and not there without the SEG). Then the
//      segmentation panel must list the segments (ohif-segments.png, the page).
//   2. Reload, double-click the SEG thumbnail and answer "Yes" (02-seg.png): the SEG must be on the
//      viewport with the node's number of segments.
//   3. Double-click the SR thumbnail and answer "Yes" to tracking (03-sr-tracked.png): OHIF
//      hydrates the measurements it has tools for (the SCOORD3D points, as Probe); the measurement
//      panel must list them (at least the node's number of findings, labelled Nodule).
//   4. The panel's first row, then the slice nearest that point (04-finding-1.png,
//      05-finding-1-viewport.png): the first measurement must be drawn there (SVG layer, and its
//      colour in the pixels), and segment 1's colour must be in the viewport's pixels.
//
//   node screenshot.js --url http://127.0.0.1:3000 --study STUDY_UID --results RESULTS_JSON
//        --out DIR [--expect-segments N] [--expect-measurements N] [--zoom-mm 25]
//        [--require-panel-length] [--chromium /usr/bin/chromium] [--timeout-s 180]
//
// RESULTS_JSON is the node's results.json for the study. --require-panel-length
// (OHIF_REQUIRE_PANEL_LENGTH=1): a tracked measurement must show a length in mm in the panel and
// on the image (OHIF 3.13 only hydrates a length it has a tool for; see scripts/ohif-check.sh).
// Exit status 0 when every check passes, 1 with "FAIL: ..." lines otherwise. Never downloads a
// browser (puppeteer-core with Debian's chromium).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const puppeteer = require('puppeteer-core');

function parseArgs(argv) {
  const o = {
    url: 'http://127.0.0.1:3000',
    study: null,
    out: null,
    expectSegments: null,
    expectMeasurements: null,
    results: null,
    zoomMm: 25,
    requirePanelLength: process.env.OHIF_REQUIRE_PANEL_LENGTH === '1',
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
    timeoutS: 180,
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--url') o.url = next();
    else if (a === '--study') o.study = next();
    else if (a === '--out') o.out = next();
    else if (a === '--expect-segments') o.expectSegments = Number(next());
    else if (a === '--expect-measurements') o.expectMeasurements = Number(next());
    else if (a === '--results') o.results = next();
    else if (a === '--zoom-mm') o.zoomMm = Number(next());
    else if (a === '--require-panel-length') o.requirePanelLength = true;
    else if (a === '--chromium') o.chromium = next();
    else if (a === '--timeout-s') o.timeoutS = Number(next());
    else {
      console.error(`screenshot.js: unknown argument ${a}`);
      process.exit(2);
    }
  }
  if (!o.study || !o.out || !o.results) {
    console.error('usage: screenshot.js --url URL --study STUDY_UID --results RESULTS_JSON --out DIR [options]');
    process.exit(2);
  }
  return o;
}

const opt = parseArgs(process.argv);
const failures = [];
const t0 = Date.now();
const log = (...a) => console.log(`[ohif ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const fail = (msg) => {
  failures.push(msg);
  console.log(`FAIL: ${msg}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function settle(page, ms = 1500) {
  try {
    await page.waitForNetworkIdle({ idleTime: 800, timeout: 30000 });
  } catch (_) {
    /* keep going: a slow request is caught by the checks */
  }
  await sleep(ms);
}

async function shot(page, name, element) {
  const file = path.join(opt.out, name);
  if (element) await element.screenshot({ path: file });
  else await page.screenshot({ path: file });
  log(`screenshot ${file}`);
  return file;
}

// Pixels of a screenshot, decoded in the page (no PNG library needed here).
async function pixelsOf(page, pngFile) {
  const b64 = fs.readFileSync(pngFile).toString('base64');
  return page.evaluate(async (data) => {
    const blob = await (await fetch(`data:image/png;base64,${data}`)).blob();
    const bmp = await createImageBitmap(blob);
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(bmp, 0, 0);
    const d = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
    return { width: bmp.width, height: bmp.height, data: Array.from(d) };
  }, b64);
}

// Pixels within `tol` (max channel difference) of rgb, inside box (x0, y0, x1, y1) if given.
function countColour(px, rgb, tol, box) {
  const [x0, y0, x1, y1] = box || [0, 0, px.width, px.height];
  let n = 0;
  for (let y = Math.max(0, Math.floor(y0)); y < Math.min(px.height, Math.ceil(y1)); y++) {
    for (let x = Math.max(0, Math.floor(x0)); x < Math.min(px.width, Math.ceil(x1)); x++) {
      const i = (y * px.width + x) * 4;
      const d = Math.max(
        Math.abs(px.data[i] - rgb[0]),
        Math.abs(px.data[i + 1] - rgb[1]),
        Math.abs(px.data[i + 2] - rgb[2]),
      );
      if (d <= tol) n++;
    }
  }
  return n;
}

// Saturated (non-grey) pixels: the CT is grey, overlays are coloured.
function countColoured(px) {
  let n = 0;
  for (let i = 0; i < px.data.length; i += 4) {
    const r = px.data[i], g = px.data[i + 1], b = px.data[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
  }
  return n;
}

function parseCssColour(s) {
  const m = /rgba?\(\s*(\d+)[,\s]+(\d+)[,\s]+(\d+)/.exec(s || '');
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  const h = /^#([0-9a-f]{6})$/i.exec(s || '');
  if (h) return [0, 2, 4].map((k) => parseInt(h[1].slice(k, k + 2), 16));
  return null;
}

async function clickThumbnail(page, modality) {
  const handles = await page.$$(
    '[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]',
  );
  for (const h of handles) {
    const mod = await h.evaluate((n) => {
      const l = n.querySelector('[data-cy="series-modality-label"]');
      return (l ? l.innerText : n.innerText).trim();
    });
    if (mod === modality || mod.startsWith(`${modality}\n`) || mod.split(/\s+/)[0] === modality) {
      await h.click({ count: 2 });
      return true;
    }
  }
  return false;
}

// Clicks the button labelled `label` of a prompt OHIF shows over the viewport; false when none
// came within timeoutMs.
async function answerPrompt(page, label, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const buttons = await page.$$('[data-cy="viewport-pane"] button, [role="dialog"] button');
    for (const b of buttons) {
      const t = await b.evaluate((n) => (n.offsetParent !== null ? n.innerText.trim() : ''));
      if (t === label) {
        await b.click();
        return true;
      }
    }
    await sleep(300);
  }
  return false;
}

const MM = /\d+(\.\d+)?\s*mm\b/;

// Annotations drawn in the SVG layer of the (first) viewport: per annotation UID its colours,
// bounding box (page pixels) and text.
async function svgAnnotations(page) {
  return page.evaluate(() => {
    const svg = document.querySelector('[data-cy="viewport-pane"] svg.svg-layer');
    if (!svg) return [];
    const groups = new Map();
    for (const el of svg.querySelectorAll('[data-annotation-uid]')) {
      const uid = el.getAttribute('data-annotation-uid');
      const shapes = [el, ...el.querySelectorAll('*')].filter((e) =>
        ['line', 'path', 'polyline', 'circle', 'ellipse', 'rect', 'polygon', 'text', 'tspan'].includes(e.tagName));
      for (const e of shapes) {
        const cs = getComputedStyle(e);
        const colour = (cs.stroke && cs.stroke !== 'none' ? cs.stroke : null) ||
          (cs.fill && cs.fill !== 'none' && cs.fill !== 'transparent' ? cs.fill : null);
        const r = e.getBoundingClientRect();
        if (!r.width && !r.height) continue;
        const g = groups.get(uid) || { uid, colours: {}, box: [Infinity, Infinity, -Infinity, -Infinity], text: [] };
        if (colour && e.tagName !== 'rect') g.colours[colour] = (g.colours[colour] || 0) + 1;
        g.box = [Math.min(g.box[0], r.left), Math.min(g.box[1], r.top), Math.max(g.box[2], r.right), Math.max(g.box[3], r.bottom)];
        if (e.tagName === 'text' || e.tagName === 'tspan') g.text.push(e.textContent);
        groups.set(uid, g);
      }
    }
    return Array.from(groups.values());
  });
}

// Logs each drawn annotation with the number of screenshot pixels of its colour in its box; ok:
// some annotation (of `tools`, when given) is really in the pixels; mm: one of those is labelled
// with a length in mm; firstSeen: the annotation `firstUid` is one of those.
function reportDrawn(px, groups, tools, where, firstUid) {
  const r = { ok: false, mm: false, firstSeen: false };
  for (const g of groups) {
    const colours = Object.entries(g.colours).sort((a, b) => b[1] - a[1]).map(([c]) => c);
    const rgb = parseCssColour(colours[0]);
    const m = 6;
    const box = [g.box[0] - m, g.box[1] - m, g.box[2] + m, g.box[3] + m];
    const n = rgb ? countColour(px, rgb, 40, box) : 0;
    const text = [...new Set(g.text)].join(' | ');
    const tool = tools ? tools[g.uid] : 'SR content';
    log(`${where}: drawn annotation ${g.uid.slice(0, 8)} (${tool || 'not a measurement'}): colour ${colours[0] || '?'}, ` +
      `box ${box.map((v) => Math.round(v)).join(',')}, ${n} pixels of that colour there` + (text ? `, text "${text}"` : ''));
    if (n >= 4 && tool) {
      r.ok = true;
      if (MM.test(text)) r.mm = true;
      if (g.uid === firstUid) r.firstSeen = true;
    }
  }
  return r;
}

// State of the active viewport, read from OHIF's services and cornerstone (window.services,
// window.cornerstone, window.cornerstoneTools are set by OHIF).
function viewportState() {
  const out = { ok: false };
  const s = window.services;
  if (!s || !window.cornerstone || !window.cornerstoneTools) return out;
  const vpId = s.viewportGridService.getState().activeViewportId;
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(vpId);
  if (!vp) return out;
  out.ok = true;
  out.viewportId = vpId;
  out.type = vp.type;
  try {
    out.imageIndex = vp.getCurrentImageIdIndex();
    out.numImages = vp.getNumberOfSlices ? vp.getNumberOfSlices() : vp.getImageIds().length;
  } catch (_) {
    /* not ready */
  }
  const cam = vp.getCamera();
  out.focalPoint = cam.focalPoint;
  out.viewPlaneNormal = cam.viewPlaneNormal;
  const seg = window.cornerstoneTools.segmentation;
  const segs = seg.state.getSegmentations() || [];
  out.segmentations = segs.map((x) => ({
    id: x.segmentationId,
    label: x.label,
    segments: Object.keys(x.segments || {}).filter((k) => k !== '0').length,
  }));
  const reps = seg.state.getSegmentationRepresentations(vpId) || [];
  out.representations = reps.map((r) => ({ id: r.segmentationId, type: r.type, visible: r.visible }));
  if (reps.length) {
    try {
      out.segment1Colour = seg.config.color.getSegmentIndexColor(vpId, reps[0].segmentationId, 1);
    } catch (e) {
      out.segment1ColourError = String(e);
    }
  }
  const ms = s.measurementService.getMeasurements();
  out.measurements = ms.map((m) => ({
    uid: m.uid,
    toolName: m.toolName,
    label: m.label,
    points: m.points,
    referencedImageId: m.referencedImageId || null,
  }));
  const svg = vp.element.querySelector('svg.svg-layer');
  out.svgAnnotations = svg
    ? Array.from(svg.querySelectorAll('[data-annotation-uid]')).map((g) => g.getAttribute('data-annotation-uid'))
    : [];
  out.svgAnnotations = Array.from(new Set(out.svgAnnotations));
  return out;
}

// Distance of a world point from the viewport's current plane, in slices.
function offPlaneSlices(state, point, spacing) {
  const n = state.viewPlaneNormal;
  const f = state.focalPoint;
  const d = (point[0] - f[0]) * n[0] + (point[1] - f[1]) * n[1] + (point[2] - f[2]) * n[2];
  return d / spacing;
}

// In the page: the first finding's axial group as OHIF's SR viewport draws it, found by its label
// ("L: ... <want>" in the SVG text of an annotation): its POLYLINEs (world lengths, the longest
// first), the SVG line drawn for the long axis and the label's text and box. Coordinates are in
// pixels of the viewport pane (what its element screenshot shows).
function axisState(want) {
  const out = { found: false, labels: [] };
  const s = window.services;
  const vpId = s.viewportGridService.getState().activeViewportId;
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(vpId);
  if (!vp) return out;
  out.imageIndex = vp.getCurrentImageIdIndex();
  const svg = vp.element.querySelector('svg.svg-layer');
  const pane = vp.element.closest('[data-cy="viewport-pane"]');
  if (!svg || !pane) return out;
  const pr = pane.getBoundingClientRect();
  const sr = svg.getBoundingClientRect();
  const ox = sr.left - pr.left;
  const oy = sr.top - pr.top;
  for (const g of svg.querySelectorAll('g[data-annotation-uid]')) {
    const text = Array.from(g.querySelectorAll('tspan')).map((t) => t.textContent.trim());
    if (!text.length) continue;
    out.labels.push(text.join(' / '));
    if (out.found || !text.some((t) => /^L\b/.test(t) && t.includes(` ${want}`))) continue;
    const uid = g.getAttribute('data-annotation-uid');
    const ann = window.cornerstoneTools.annotation.state.getAnnotation(uid);
    const polylines = ((ann && ann.data && ann.data.renderableData && ann.data.renderableData.POLYLINE) || [])
      .filter((p) => p.length >= 2)
      .map((p) => ({ p, mm: Math.hypot(...p[1].map((v, k) => v - p[0][k])) }))
      .sort((a, b) => b.mm - a.mm);
    if (!polylines.length) continue;
    const [a, b] = polylines[0].p;
    const ca = vp.worldToCanvas(a);
    const cb = vp.worldToCanvas(b);
    const near = (x, y, c) => Math.hypot(x - c[0], y - c[1]) <= 2;
    let line = null;
    for (const l of svg.querySelectorAll('line')) {
      const x1 = Number(l.getAttribute('x1')), y1 = Number(l.getAttribute('y1'));
      const x2 = Number(l.getAttribute('x2')), y2 = Number(l.getAttribute('y2'));
      if ((near(x1, y1, ca) && near(x2, y2, cb)) || (near(x1, y1, cb) && near(x2, y2, ca))) {
        line = { x1: x1 + ox, y1: y1 + oy, x2: x2 + ox, y2: y2 + oy, stroke: getComputedStyle(l).stroke };
        break;
      }
    }
    const t = g.querySelector('text');
    const tr = t.getBoundingClientRect();
    out.found = true;
    out.uid = uid;
    out.text = text;
    out.polylineMm = polylines.map((x) => x.mm);
    out.mid = a.map((v, k) => (v + b[k]) / 2);
    out.expected = { x1: ca[0] + ox, y1: ca[1] + oy, x2: cb[0] + ox, y2: cb[1] + oy };
    out.line = line;
    out.textBox = [tr.left - pr.left, tr.top - pr.top, tr.right - pr.left, tr.bottom - pr.top];
    out.textColour = getComputedStyle(t).fill;
  }
  return out;
}

// In the page: centre the active viewport on a world point (in its plane) and show `mm`
// millimetres from the centre to the top edge (cornerstone camera: parallelScale).
function zoomTo(point, mm) {
  const s = window.services;
  const vp = s.cornerstoneViewportService.getCornerstoneViewport(s.viewportGridService.getState().activeViewportId);
  const cam = vp.getCamera();
  const n = cam.viewPlaneNormal;
  const d0 = point.map((v, k) => v - cam.focalPoint[k]);
  const dn = d0[0] * n[0] + d0[1] * n[1] + d0[2] * n[2];
  const d = d0.map((v, k) => v - dn * n[k]);
  vp.setCamera({
    focalPoint: cam.focalPoint.map((v, k) => v + d[k]),
    position: cam.position.map((v, k) => v + d[k]),
    parallelScale: mm,
  });
  vp.render();
}

// In the page: the segment of finding `number` (labelled "... <number>", else segment <number>) of
// the segmentation on the active viewport, and its colour there.
function segmentColour(number) {
  const s = window.services;
  const vpId = s.viewportGridService.getState().activeViewportId;
  const seg = window.cornerstoneTools.segmentation;
  const reps = seg.state.getSegmentationRepresentations(vpId) || [];
  if (!reps.length) return { error: 'no segmentation on the viewport' };
  const id = reps[0].segmentationId;
  const segments = (seg.state.getSegmentation(id) || {}).segments || {};
  let index = number;
  for (const [k, v] of Object.entries(segments)) {
    if (v && v.label && new RegExp(`(^|\\D)${number}$`).test(v.label.trim())) index = Number(k);
  }
  try {
    const colour = seg.config.color.getSegmentIndexColor(vpId, id, index);
    return { index, label: segments[index] && segments[index].label, colour: colour && Array.from(colour) };
  } catch (e) {
    return { index, error: String(e) };
  }
}

// OHIF's notifications (bottom right, over the viewport) are gone before a screenshot; logs what
// they said.
const toastsSeen = new Set();
async function dismissToasts(page, timeoutMs = 12000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const texts = await page.$$eval('[data-sonner-toast]', (els) => els.map((e) => e.innerText.replace(/\s+/g, ' ').trim()));
    for (const t of texts) {
      if (!toastsSeen.has(t)) {
        toastsSeen.add(t);
        log(`OHIF notification: "${t}"`);
      }
    }
    if (!texts.length) return;
    if (Date.now() > end) {
      await page.$$eval('[data-sonner-toast]', (els) => els.forEach((e) => (e.style.visibility = 'hidden')));
      log('hid a notification still shown for the screenshot');
      return;
    }
    await sleep(500);
  }
}

// Points along the line (one per pixel) with a pixel of colour rgb (within tol) within 1 pixel.
function lineHits(px, l, rgb, tol) {
  const len = Math.hypot(l.x2 - l.x1, l.y2 - l.y1);
  const n = Math.max(1, Math.round(len));
  let hits = 0;
  for (let i = 0; i <= n; i++) {
    const x = l.x1 + ((l.x2 - l.x1) * i) / n;
    const y = l.y1 + ((l.y2 - l.y1) * i) / n;
    if (countColour(px, rgb, tol, [x - 1, y - 1, x + 2, y + 2]) > 0) hits++;
  }
  return { samples: n + 1, hits, len };
}

// The long axis is drawn (an SVG line on the POLYLINE's end points, and its colour along it in
// the screenshot) with its label showing `want` (in the SVG text, and text pixels in its box).
// Whether the long axis and its label are in the screenshot's pixels where the viewport's SVG
// says; each problem is a failure unless `quiet` (a retry follows).
function checkAxisDrawn(px, ax, want, where, quiet = false) {
  const problems = [];
  if (!ax.line) {
    const e = ax.expected;
    problems.push(`${where}: no SVG line on the long-axis POLYLINE (expected from ${Math.round(e.x1)},${Math.round(e.y1)} to ${Math.round(e.x2)},${Math.round(e.y2)})`);
  } else {
    const rgb = parseCssColour(ax.line.stroke) || [255, 255, 0];
    const h = lineHits(px, ax.line, rgb, 60);
    log(`${where}: long axis drawn ${Math.round(h.len)} px long in ${ax.line.stroke}, ` +
      `${h.hits}/${h.samples} points along it in that colour`);
    if (h.len < 60) problems.push(`${where}: the long axis is only ${Math.round(h.len)} px long (not zoomed in?)`);
    if (h.hits < 0.3 * h.samples || h.hits < 15) {
      problems.push(`${where}: the long axis is not in the pixels (${h.hits}/${h.samples} points along it in ${ax.line.stroke})`);
    }
    const label = ax.text.find((t) => /^L\b/.test(t)) || '';
    const trgb = parseCssColour(ax.textColour) || rgb;
    const nText = countColour(px, trgb, 60, ax.textBox);
    log(`${where}: label "${ax.text.join(' / ')}" (${nText} pixels of ${ax.textColour} in its box)`);
    if (!label.includes(` ${want}`)) problems.push(`${where}: the long-axis label "${label}" does not show ${want}`);
    if (nText < 30) problems.push(`${where}: the label is not in the pixels (${nText} pixels of its colour in its box)`);
  }
  if (!quiet) problems.forEach(fail);
  return problems.length === 0;
}

// Screenshot of `pane` with the long axis checked in it. The viewport can still be re-laid out
// (a side panel opening resizes the canvas) between reading where the SVG draws the axis and
// taking the picture: up to three tries, reading both again, before a failure.
async function shotWithAxis(page, name, pane, want) {
  for (let attempt = 1; ; attempt++) {
    const ax = await page.evaluate(axisState, want);
    const file = await shot(page, name, pane);
    const px = await pixelsOf(page, file);
    const last = attempt === 3;
    if (checkAxisDrawn(px, ax, want, name, !last) || last) return { ax, px };
    log(`${name}: not drawn where the viewport says (layout still settling?); try ${attempt + 1} of 3`);
    await settle(page, 1500);
  }
}

async function main() {
  fs.mkdirSync(opt.out, { recursive: true });
  const finding = (JSON.parse(fs.readFileSync(opt.results, 'utf8')).findings || [])[0];
  if (!finding || typeof finding.long_axis_mm !== 'number') {
    throw new Error(`${opt.results} has no first finding with a long_axis_mm`);
  }
  log(`first finding (results.json): number ${finding.number}, long axis ${finding.long_axis_mm.toFixed(2)} mm`);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'jnsc-ohif-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: opt.chromium,
    headless: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
      '--window-size=1600,1000',
      `--user-data-dir=${userDataDir}`,
    ],
    defaultViewport: { width: 1600, height: 1000 },
    protocolTimeout: opt.timeoutS * 1000,
  });
  const watchdog = setTimeout(() => {
    console.log(`FAIL: no result after ${opt.timeoutS} s`);
    browser.close().finally(() => process.exit(1));
  }, opt.timeoutS * 1000);
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    // No onboarding tour over the viewport.
    await page.evaluateOnNewDocument(() => {
      localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
    });

    const url = `${opt.url.replace(/\/$/, '')}/viewer?StudyInstanceUIDs=${encodeURIComponent(opt.study)}`;
    log(`open ${url}`);
    await page.goto(url, { waitUntil: 'networkidle2', timeout: 90000 });
    await page.waitForSelector('[data-cy="series-modality-label"]', { timeout: 60000 })
      .catch(() => fail('the study browser lists no series within 60 s'));
    await page.waitForFunction(
      () => document.querySelectorAll('[data-cy="series-modality-label"]').length >= 3,
      { timeout: 10000 },
    ).catch(() => {});
    const modalities = await page.$$eval('[data-cy="series-modality-label"]', (els) =>
      els.map((e) => e.innerText.trim()),
    );
    log(`study browser series: ${modalities.join(', ')}`);
    for (const m of ['CT', 'SEG', 'SR']) {
      if (!modalities.includes(m)) fail(`the study browser lists no ${m} series (has: ${modalities.join(', ') || 'nothing'})`);
    }
    await page.waitForFunction(() => {
      const s = window.services;
      if (!s) return false;
      const id = s.viewportGridService.getState().activeViewportId;
      const vp = id && s.cornerstoneViewportService.getCornerstoneViewport(id);
      return !!(vp && vp.getCurrentImageId && vp.getCurrentImageId());
    }, { timeout: 60000 });
    await settle(page);
    await shot(page, '01-study.png');

    // SR, as a reader opens it: double-click its thumbnail and answer "No" to tracking. OHIF's SR
    // viewport draws the SR's own content on its CT images ("<" ">" step through it), including
    // each finding's TID 1410 axial group: the long and short axis POLYLINEs, labelled
    // "L: <long> mm / W: <short> mm". Step to the first finding's, zoom in on it
    // (ohif-sr-axes.png), then lay the SEG over that same viewport (ohif-seg-and-axes.png) and open
    // the segmentation panel (ohif-segments.png).
    const want = `${finding.long_axis_mm.toFixed(2)} mm`;
    const srOpened = await clickThumbnail(page, 'SR');
    if (!srOpened) fail('no SR thumbnail to open');
    if (srOpened) {
      await page.waitForFunction(() => {
        const s = window.services;
        const ds = s && s.displaySetService.getActiveDisplaySets().find((d) => d.Modality === 'SR');
        return !!(ds && ds.isLoaded);
      }, { timeout: 60000 }).catch(() => fail('the SR was not loaded within 60 s'));
      const declined = await answerPrompt(page, 'No', 6000);
      log(declined ? 'answered "No" to tracking (the SR stays in its own viewport)' : 'no tracking prompt in the SR viewport');
      await settle(page, 1500);
      const srInfo = await page.evaluate(() => {
        const ds = window.services.displaySetService.getActiveDisplaySets().find((d) => d.Modality === 'SR');
        const ms = (ds && ds.measurements) || [];
        return {
          measurements: ms.length,
          kinds: ms.map((m) => (m.coords || []).map((c) => `${c.ValueType}:${c.GraphicType}`).join('+')),
          labels: ms.map((m) => (m.labels || []).map((l) => `${l.label}=${l.value}`).join(', ')),
        };
      });
      const kinds = {};
      for (const k of srInfo.kinds) kinds[k] = (kinds[k] || 0) + 1;
      log(`SR content: ${srInfo.measurements} measurements (${Object.entries(kinds).map(([k, n]) => `${n} ${k || 'no coordinates'}`).join(', ')})`);
      const planar = srInfo.kinds.filter((k) => /SCOORD:POLYLINE/.test(k)).length;
      if (!planar) fail('the SR has no planar (POLYLINE) measurement: no long/short axis to draw');
      else if (!srInfo.labels.some((l) => l.includes(`=${want}`))) {
        fail(`no SR measurement is labelled with the first finding's long axis ${want} (results.json)`);
      }

      // Step to the first finding's axial group: the one OHIF labels with its long axis.
      let ax = await page.evaluate(axisState, want);
      for (let i = 0; planar && !ax.found && i < srInfo.measurements; i++) {
        const right = await page.$('[data-cy="viewport-action-arrows-right"]');
        if (!right) break;
        await right.click();
        await settle(page, 1000);
        ax = await page.evaluate(axisState, want);
      }
      if (planar && !ax.found) {
        fail(`the SR viewport never draws the first finding's long axis labelled ${want} (labels seen: ${ax.labels.join('; ') || 'none'})`);
      }
      if (ax.found) {
        log(`SR viewport: first finding's axial group ${ax.uid.slice(0, 12)}... on slice ${ax.imageIndex + 1}: ` +
          `"${ax.text.join(' / ')}", POLYLINEs of ${ax.polylineMm.map((v) => v.toFixed(2)).join(' and ')} mm`);
        if (Math.abs(ax.polylineMm[0] - finding.long_axis_mm) > 0.05) {
          fail(`the long-axis POLYLINE is ${ax.polylineMm[0].toFixed(3)} mm long, results.json says ${finding.long_axis_mm.toFixed(3)} mm`);
        }
        // Zoom in (cornerstone camera) so that the nodule and its label are readable.
        await page.evaluate(zoomTo, ax.mid, opt.zoomMm);
        await settle(page, 1200);
        await dismissToasts(page);
        const pane = await page.$('[data-cy="viewport-pane"]');
        let axesPx;
        ({ ax, px: axesPx } = await shotWithAxis(page, 'ohif-sr-axes.png', pane, want));

        // The SEG over that same SR viewport. OHIF 3.13's data overlay menu offers no
        // segmentation here (its background display set, the SR, is not reconstructable), so add
        // the SEG display set the way OHIF hydrates one: load it and add its labelmap
        // representation to this viewport (segmentationService).
        const seg = await page.evaluate(async () => {
          const s = window.services;
          const vpId = s.viewportGridService.getState().activeViewportId;
          const ds = s.displaySetService.getActiveDisplaySets().find((d) => d.Modality === 'SEG');
          if (!ds) return { error: 'no SEG display set' };
          try {
            await ds.load({ headers: {} });
            await s.segmentationService.addSegmentationRepresentation(vpId, { segmentationId: ds.displaySetInstanceUID });
          } catch (e) {
            return { error: String(e) };
          }
          return { id: ds.displaySetInstanceUID };
        });
        if (seg.error) fail(`could not lay the SEG over the SR viewport: ${seg.error}`);
        await page.waitForFunction(() => {
          const s = window.services;
          const id = s.viewportGridService.getState().activeViewportId;
          return s.segmentationService.getSegmentationRepresentations(id).length > 0;
        }, { timeout: 30000 }).catch(() => fail('the SEG is not on the SR viewport within 30 s'));
        await settle(page, 2000);
        await dismissToasts(page);
        const sc = await page.evaluate(segmentColour, finding.number);
        const { ax: ax2, px } = await shotWithAxis(page, 'ohif-seg-and-axes.png', pane, want);
        if (!ax2.found) fail('after the SEG was added, the SR viewport no longer draws the first finding\'s long axis');
        if (ax2.found) {
          if (!sc.colour) {
            fail(`no colour for the first finding's segment (${sc.error || 'no representation'})`);
          } else {
            // Segment colour near the long axis: in its bounding box, widened by half its length.
            const l = ax2.line;
            const len = Math.hypot(l.x2 - l.x1, l.y2 - l.y1);
            const m = Math.max(10, len / 2);
            const box = [Math.min(l.x1, l.x2) - m, Math.min(l.y1, l.y2) - m, Math.max(l.x1, l.x2) + m, Math.max(l.y1, l.y2) + m];
            const rgb = sc.colour.slice(0, 3);
            const nWith = countColour(px, rgb, 40, box);
            const nWithout = countColour(axesPx, rgb, 40, box);
            log(`ohif-seg-and-axes.png: segment ${sc.index} "${sc.label}" colour rgb(${rgb.join(',')}): ${nWith} pixels ` +
              `around the long axis (box ${box.map(Math.round).join(',')}; ${nWithout} there without the SEG)`);
            if (nWith < 40 || nWith < 4 * nWithout) {
              fail(`the first finding's segment colour rgb(${rgb.join(',')}) is not around its long axis in ohif-seg-and-axes.png (${nWith} pixels, ${nWithout} without the SEG)`);
            }
            if (sc.label && !new RegExp(`\\b${finding.number}\\b`).test(sc.label)) {
              log(`note: segment ${sc.index} is labelled "${sc.label}"`);
            }
          }
        }

        // The segmentation panel next to it.
        const segBtn = await page.$('[data-cy="panelSegmentation-btn"]');
        if (segBtn) {
          await segBtn.click();
          await settle(page, 1000);
        }
        await page.evaluate(zoomTo, ax.mid, opt.zoomMm);
        await settle(page, 800);
        await dismissToasts(page);
        const segRows = await page.$$eval('[data-cy="data-row"]', (els) =>
          els.map((e) => e.innerText.replace(/\s+/g, ' ').trim()));
        log(`segmentation panel rows (${segRows.length}): ${segRows.slice(0, 4).map((r) => `"${r}"`).join('; ')}${segRows.length > 4 ? '; ...' : ''}`);
        if (opt.expectSegments != null && segRows.length < opt.expectSegments) {
          fail(`the segmentation panel lists ${segRows.length} segments, the node reported ${opt.expectSegments}`);
        }
        if (sc.label && !segRows.some((r) => r.includes(sc.label))) fail(`the segmentation panel does not list "${sc.label}"`);
        await shot(page, 'ohif-segments.png');
      }
    }

    // Start again from the study, as a reader who tracks the SR's measurements: the SEG first,
    // then the SR (answering OHIF's prompts), then the first finding.
    await page.goto(url, { waitUntil: 'networkidle2', timeout: 90000 });
    await page.waitForSelector('[data-cy="series-modality-label"]', { timeout: 60000 }).catch(() => {});
    await page.waitForFunction(() => {
      const s = window.services;
      if (!s) return false;
      const id = s.viewportGridService.getState().activeViewportId;
      const vp = id && s.cornerstoneViewportService.getCornerstoneViewport(id);
      return !!(vp && vp.getCurrentImageId && vp.getCurrentImageId());
    }, { timeout: 60000 }).catch(() => {});
    await settle(page, 1000);

    // SEG: double-click its thumbnail, answer OHIF's prompt: it is overlaid on the CT.
    const segOpened = await clickThumbnail(page, 'SEG');
    if (!segOpened) fail('no SEG thumbnail to open');
    else {
      const answered = await answerPrompt(page, 'Yes', 20000);
      log(answered ? 'answered "Yes" to loading the SEG' : 'no SEG prompt (loaded without one?)');
      await page.waitForFunction(() => {
        const s = window.services;
        const t = window.cornerstoneTools;
        if (!s || !t) return false;
        const id = s.viewportGridService.getState().activeViewportId;
        return (t.segmentation.state.getSegmentationRepresentations(id) || []).length > 0;
      }, { timeout: 60000 }).catch(() => fail('the SEG did not load onto the viewport within 60 s'));
    }
    await settle(page, 1500);
    await shot(page, '02-seg.png');

    // SR: double-click its thumbnail and answer "Yes" to tracking: OHIF hydrates the measurements
    // it can (tools it knows) and shows them on the CT and in the measurement panel.
    if (srOpened) {
      await clickThumbnail(page, 'SR');
      const answered = await answerPrompt(page, 'Yes', 15000);
      log(answered ? 'answered "Yes" to tracking the SR\'s measurements' : 'no tracking prompt (hydrated without one?)');
      await page.waitForFunction(
        () => window.services && window.services.measurementService.getMeasurements().length > 0,
        { timeout: 60000 },
      ).catch(() => fail('no measurement was hydrated from the SR within 60 s'));
      await settle(page, 2000);
    }

    // Measurement panel (right side): open it if it is not.
    if (!(await page.$('[data-cy="trackedMeasurements-panel"]'))) {
      const btn = await page.$('[data-cy="trackedMeasurements-btn"]');
      if (btn) await btn.click();
    }
    await page.waitForSelector('[data-cy^="measurement-table-row-"]', { timeout: srOpened ? 20000 : 3000 })
      .catch(() => fail('the measurement panel shows no measurement rows'));
    await settle(page, 500);
    await shot(page, '03-sr-tracked.png');

    // Go to the first finding: the panel's first row (OHIF jumps to the measurement), then to the
    // slice nearest its point (OHIF's jump may land on a neighbouring slice, where an off-slice 3D
    // point is not drawn).
    const row0 = await page.$('[data-cy="measurement-table-row-0"] [data-cy="data-row-title"]')
      || await page.$('[data-cy="measurement-table-row-0"]');
    if (row0) {
      await row0.click();
      await settle(page, 1500);
    }
    let st = await page.evaluate(viewportState);
    if (!st.ok) throw new Error('OHIF has no active cornerstone viewport');
    const m0 = st.measurements[0];
    if (m0 && m0.points && m0.points.length && !m0.referencedImageId) {
      const spacing = await page.evaluate(() => {
        const s = window.services;
        const vp = s.cornerstoneViewportService.getCornerstoneViewport(
          s.viewportGridService.getState().activeViewportId,
        );
        const spacing = vp.getImageData ? vp.getImageData()?.spacing : null;
        return spacing ? spacing[2] : null;
      });
      if (spacing) {
        const centre = m0.points.reduce((a, p) => a.map((v, k) => v + p[k] / m0.points.length), [0, 0, 0]);
        for (let i = 0; i < 5; i++) {
          st = await page.evaluate(viewportState);
          const off = offPlaneSlices(st, centre, spacing);
          if (Math.abs(off) <= 0.5) break;
          const delta = Math.round(off);
          // Scroll one slice each way and keep the direction that gets closer.
          await page.evaluate((d) => {
            const s = window.services;
            const vp = s.cornerstoneViewportService.getCornerstoneViewport(
              s.viewportGridService.getState().activeViewportId,
            );
            vp.scroll(d);
            vp.render();
          }, delta);
          await sleep(400);
          const st2 = await page.evaluate(viewportState);
          if (Math.abs(offPlaneSlices(st2, centre, spacing)) > Math.abs(off)) {
            await page.evaluate((d) => {
              const s = window.services;
              const vp = s.cornerstoneViewportService.getCornerstoneViewport(
                s.viewportGridService.getState().activeViewportId,
              );
              vp.scroll(-2 * d);
              vp.render();
            }, delta);
            await sleep(400);
          }
        }
        st = await page.evaluate(viewportState);
        log(`finding 1 centre ${centre.map((v) => v.toFixed(1)).join(', ')}: ` +
          `${Math.abs(offPlaneSlices(st, centre, spacing) * spacing).toFixed(2)} mm from the shown plane`);
      }
    }
    await settle(page, 1500);
    st = await page.evaluate(viewportState);
    log(`viewport ${st.viewportId} (${st.type}), slice ${st.imageIndex + 1}/${st.numImages}`);
    log(`segmentations: ${JSON.stringify(st.segmentations)}; on viewport: ${JSON.stringify(st.representations)}`);
    log(`measurements: ${st.measurements.length} (${[...new Set(st.measurements.map((m) => m.toolName))].join(', ')}); ` +
      `drawn on this slice: ${st.svgAnnotations.length}`);

    const pageFile = await shot(page, '04-finding-1.png');
    const pagePx = await pixelsOf(page, pageFile);
    const vpElement = await page.$('[data-cy="viewport-pane"]');
    const vpFile = await shot(page, '05-finding-1-viewport.png', vpElement);
    const px = await pixelsOf(page, vpFile);

    // --- SEG checks ---
    const nSeg = st.segmentations.reduce((a, s) => a + s.segments, 0);
    if (!st.representations.length) fail('no segmentation is shown on the viewport');
    if (opt.expectSegments != null && nSeg !== opt.expectSegments) {
      fail(`OHIF has ${nSeg} segments, the node reported ${opt.expectSegments}`);
    }
    const c1 = st.segment1Colour;
    if (!c1) {
      fail(`no colour for segment 1 (${st.segment1ColourError || 'no representation'})`);
    } else {
      const nC1 = countColour(px, c1, 40);
      log(`segment 1 colour rgb(${c1.slice(0, 3).join(',')}): ${nC1} viewport pixels; ` +
        `coloured pixels in all: ${countColoured(px)}`);
      if (nC1 < 15) fail(`segment 1's colour rgb(${c1.slice(0, 3).join(',')}) is not in the viewport at the finding (${nC1} pixels)`);
    }

    // --- SR checks: panel ---
    const rows = await page.$$eval('[data-cy^="measurement-table-row-"]', (els) =>
      els.map((e) => e.innerText.replace(/\s+/g, ' ').trim()),
    );
    log(`measurement panel rows (${rows.length}): ${rows.slice(0, 5).map((r) => `"${r}"`).join('; ')}${rows.length > 5 ? '; ...' : ''}`);
    if (!rows.length) fail('the measurement panel lists no measurement');
    if (opt.expectMeasurements != null && rows.length < opt.expectMeasurements) {
      fail(`the measurement panel lists ${rows.length} measurements, the node reported ${opt.expectMeasurements} findings`);
    }
    if (rows.length && !rows.some((r) => /nodule/i.test(r))) fail('no measurement row is labelled Nodule');
    const withMm = rows.filter((r) => MM.test(r));
    log(`rows with a length in mm: ${withMm.length}`);
    if (opt.requirePanelLength && !withMm.length) fail('no measurement row shows a length in mm (--require-panel-length)');

    // --- SR checks: drawn annotation ---
    const drawn = await svgAnnotations(page);
    const tools = Object.fromEntries(st.measurements.map((m) => [m.uid, m.toolName]));
    const first = st.measurements[0];
    if (!drawn.length) {
      fail('no measurement annotation is drawn in the viewport at the first finding');
    } else {
      const r = reportDrawn(pagePx, drawn, tools, 'tracked', first && first.uid);
      if (!r.ok) fail('no measurement annotation of the SR has its colour in the viewport pixels');
      else if (first && !r.firstSeen) fail('the first measurement (the first finding) is not drawn on its own slice');
      if (opt.requirePanelLength && !r.mm) fail('no tracked measurement is drawn with a length in mm (--require-panel-length)');
    }

    const relevant = errors.filter((e) => !/favicon|sw\.js|service.?worker/i.test(e));
    if (relevant.length) {
      log(`browser errors (${relevant.length}, first 5):`);
      for (const e of relevant.slice(0, 5)) console.log(`  ${e.slice(0, 300)}`);
    }
  } finally {
    clearTimeout(watchdog);
    await browser.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  if (failures.length) {
    console.log(`OHIF check FAILED (${failures.length}): screenshots in ${opt.out}`);
    process.exit(1);
  }
  log(`OHIF check passed: screenshots in ${opt.out}`);
}

main().catch((e) => {
  console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
