#!/usr/bin/env node
// Opens a study in OHIF 3.13 (served by serve.js) with headless Chromium and looks at the jnsc SEG
// and SR the way a reader would, with OHIF's default prompts; takes screenshots into --out and
// checks what is on screen:
//
//   1. SR content (02-sr-viewport.png): double-click the SR thumbnail; OHIF's SR viewport draws the
//      SR's own measurements on their CT images. When the SR has planar measurements (TID 1410
//      long/short axis POLYLINEs), step to the first one: it must be drawn (SVG layer, and its
//      colour in the pixels) with its length in mm.
//   2. Reload, double-click the SEG thumbnail and answer "Yes" (03-seg.png): the SEG must be on the
//      viewport with the node's number of segments.
//   3. Double-click the SR thumbnail and answer "Yes" to tracking (04-sr-tracked.png): OHIF
//      hydrates the measurements it has tools for (the SCOORD3D points, as Probe); the measurement
//      panel must list them (at least the node's number of findings, labelled Nodule).
//   4. The panel's first row, then the slice nearest that point (05-finding-1.png,
//      06-finding-1-viewport.png): the first measurement must be drawn there (SVG layer, and its
//      colour in the pixels), and segment 1's colour must be in the viewport's pixels.
//   5. The segmentation panel, for the record (07-segmentation-panel.png).
//
//   node screenshot.js --url http://127.0.0.1:3000 --study STUDY_UID --out DIR
//        [--expect-segments N] [--expect-measurements N] [--require-length]
//        [--require-panel-length] [--chromium /usr/bin/chromium] [--timeout-s 180]
//
// --require-length (OHIF_REQUIRE_LENGTH=1): the SR must have a planar measurement (step 1).
// --require-panel-length (OHIF_REQUIRE_PANEL_LENGTH=1): a tracked measurement must show a length
// in mm in the panel and on the image (OHIF 3.13 only hydrates a length it has a tool for; see
// scripts/ohif-check.sh). Exit status 0 when every check passes, 1 with "FAIL: ..." lines
// otherwise. Never downloads a browser (puppeteer-core with Debian's chromium).
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
    requireLength: process.env.OHIF_REQUIRE_LENGTH === '1',
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
    else if (a === '--require-length') o.requireLength = true;
    else if (a === '--require-panel-length') o.requirePanelLength = true;
    else if (a === '--chromium') o.chromium = next();
    else if (a === '--timeout-s') o.timeoutS = Number(next());
    else {
      console.error(`screenshot.js: unknown argument ${a}`);
      process.exit(2);
    }
  }
  if (!o.study || !o.out) {
    console.error('usage: screenshot.js --url URL --study STUDY_UID --out DIR [options]');
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

async function main() {
  fs.mkdirSync(opt.out, { recursive: true });
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

    // SR, as a reader opens it: double-click its thumbnail. OHIF shows the SR's own content (its
    // measurements drawn on their images, "<" ">" step through them) and asks whether to track
    // the measurements.
    const srOpened = await clickThumbnail(page, 'SR');
    if (!srOpened) fail('no SR thumbnail to open');
    let srInfo = null;
    if (srOpened) {
      await page.waitForFunction(() => {
        const s = window.services;
        const ds = s && s.displaySetService.getActiveDisplaySets().find((d) => d.Modality === 'SR');
        return !!(ds && ds.isLoaded);
      }, { timeout: 60000 }).catch(() => fail('the SR was not loaded within 60 s'));
      await settle(page, 1500);
      srInfo = await page.evaluate(() => {
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
      const planar = srInfo.kinds.findIndex((k) => /SCOORD:POLYLINE/.test(k));
      if (planar >= 0) log(`first planar SR measurement: ${srInfo.labels[planar]}`);
      if (planar < 0 && opt.requireLength) fail('the SR has no planar (POLYLINE) measurement (--require-length)');
      // Step to the first planar measurement (the SR viewport starts at the first one).
      let srDrawn = [];
      if (planar >= 0) {
        for (let i = 0; i < Math.min(srInfo.measurements, 6); i++) {
          srDrawn = await svgAnnotations(page);
          if (srDrawn.some((g) => MM.test(g.text.join(' ')))) break;
          const right = await page.$('[data-cy="viewport-action-arrows-right"]');
          if (!right) break;
          await right.click();
          await settle(page, 1200);
        }
      }
      srDrawn = await svgAnnotations(page);
      const srShot = await shot(page, '02-sr-viewport.png');
      if (planar >= 0) {
        const px = await pixelsOf(page, srShot);
        const { ok, mm } = reportDrawn(px, srDrawn, null, 'SR viewport');
        const want = (/=\s*(\d+(?:\.\d+)?\s*mm)/.exec(srInfo.labels[planar]) || [])[1];
        const texts = srDrawn.map((g) => g.text.join(' ')).join(' | ');
        if (!ok) fail('the SR viewport draws none of the SR\'s planar measurements (long/short axis)');
        else if (!mm) fail('the SR viewport draws the planar measurement without a length in mm');
        else if (want && !texts.includes(want)) fail(`the SR viewport does not draw the first planar measurement (${want})`);
        else log(`SR viewport: the first planar measurement is drawn with its length (${want})`);
      } else {
        log('SR viewport: the SR has no planar measurement, nothing to check there');
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
    await shot(page, '03-seg.png');

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
    await shot(page, '04-sr-tracked.png');

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

    const pageFile = await shot(page, '05-finding-1.png');
    const pagePx = await pixelsOf(page, pageFile);
    const vpElement = await page.$('[data-cy="viewport-pane"]');
    const vpFile = await shot(page, '06-finding-1-viewport.png', vpElement);
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

    // The segmentation panel, for the record.
    const segBtn = await page.$('[data-cy="panelSegmentation-btn"]');
    if (segBtn) {
      await segBtn.click();
      await settle(page, 800);
      await shot(page, '07-segmentation-panel.png');
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
