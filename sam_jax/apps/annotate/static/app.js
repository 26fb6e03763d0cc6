// sam-jax annotate: the page. Plain JS, no build step, no third-party code.
//
// The page owns the document being edited ({revision, done, objects}); the server predicts masks
// (POST /api/predict), and every change is written back at once (PUT /api/annotations).
// Objects are immutable values: an edit replaces an object (and the array), so undo/redo keep
// plain references to earlier arrays. All actions run one at a time through `enqueue`, so clicks
// made while a prediction is in flight apply in order on top of its result.
"use strict";

(() => {
  // ---------------------------------------------------------------------------------------------
  // COCO RLE: column-major runs, compressed as in pycocotools' rleToString / rleFrString.

  /** Parse a compressed counts string into run lengths. */
  function stringToCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x += (c & 0x1f) * 2 ** (5 * k); // arithmetic, not <<: runs may exceed 32 bits of shifts
        more = (c & 0x20) !== 0;
        p++; k++;
        if (!more && (c & 0x10)) x -= 2 ** (5 * k); // sign extension
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  /** Run lengths -> compressed counts string. */
  function countsToString(counts) {
    const out = [];
    for (let i = 0; i < counts.length; i++) {
      let x = counts[i];
      if (i > 2) x -= counts[i - 2];
      let more = true;
      while (more) {
        let c = ((x % 32) + 32) % 32; // x & 0x1f, for negative x too
        x = Math.floor(x / 32); // arithmetic shift right by 5
        more = (c & 0x10) ? x !== -1 : x !== 0;
        if (more) c |= 0x20;
        out.push(String.fromCharCode(c + 48));
      }
    }
    return out.join("");
  }

  const countsCache = new Map(); // counts string -> run lengths (hit tests, decoding)
  function runsOf(rle) {
    let runs = countsCache.get(rle.counts);
    if (!runs) {
      runs = stringToCounts(rle.counts);
      if (countsCache.size > 512) countsCache.clear();
      countsCache.set(rle.counts, runs);
    }
    return runs;
  }

  /** RLE -> row-major Uint8Array (H*W) of 0/1. */
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const mask = new Uint8Array(h * w);
    let pos = 0, v = 0;
    for (const n of runsOf(rle)) {
      if (v) {
        let x = Math.floor(pos / h), y = pos - x * h;
        for (let i = 0; i < n; i++) {
          mask[y * w + x] = 1;
          if (++y === h) { y = 0; x++; }
        }
      }
      pos += n;
      v ^= 1;
    }
    return mask;
  }

  /** Row-major 0/1 mask (H*W) -> RLE {size, counts}. */
  function encodeMask(mask, h, w) {
    const counts = [];
    let prev = 0, run = 0;
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        const v = mask[y * w + x] ? 1 : 0;
        if (v !== prev) { counts.push(run); run = 0; prev = v; }
        run++;
      }
    }
    counts.push(run);
    return { size: [h, w], counts: countsToString(counts) };
  }

  /** Whether pixel (x, y) of the image is inside the RLE mask. */
  function rleContains(rle, x, y) {
    const [h, w] = rle.size;
    x = Math.floor(x); y = Math.floor(y);
    if (x < 0 || y < 0 || x >= w || y >= h) return false;
    const target = x * h + y;
    let pos = 0, v = 0;
    for (const n of runsOf(rle)) {
      if (target < pos + n) return v === 1;
      pos += n;
      v ^= 1;
    }
    return false;
  }

  function rleArea(rle) {
    let a = 0;
    runsOf(rle).forEach((n, i) => { if (i % 2) a += n; });
    return a;
  }

  // ---------------------------------------------------------------------------------------------
  // State.

  const PALETTE = [
    [255, 99, 71], [65, 155, 255], [80, 220, 120], [255, 200, 40], [200, 90, 255], [0, 210, 210],
    [255, 120, 200], [160, 220, 60], [255, 150, 60], [120, 130, 255], [60, 200, 160], [230, 80, 120],
  ];
  const HISTORY_LIMIT = 300;

  const S = {
    config: null,
    images: [], // [{name, objects, done}]
    index: -1,
    name: null,
    width: 0,
    height: 0,
    bitmap: null,
    doc: null, // {revision, done, objects: [object]}; objects are replaced, never mutated
    selected: null, // id of the selected object (clicks add prompts to it) or null
    candidates: null, // {id, masks: [{segmentation, score}]}, the last prediction's masks
    pending: null, // {id, prompts}: prompts sent, mask not back yet
    proposals: null, // "segment everything" results under review: [{..., keep}]
    edit: null, // brush stroke in progress
    tool: "prompt",
    brush: 12,
    multimask: true,
    label: null, // label of new objects
    view: { s: 1, x: 0, y: 0 }, // screen = image * s + (x, y), CSS pixels
    histories: new Map(), // image name -> {undo: [snapshot], redo: [snapshot]}
    dirty: false,
    saving: null,
    saveTimer: null,
    saveError: null,
    embedding: Promise.resolve(),
    epoch: 0, // bumped on every image switch; late responses for an older image are dropped
    busy: 0,
    painting: null, // {id, counts, input}: a predicted mask committed, not drawn yet (timing marks)
  };

  const $ = (sel) => document.querySelector(sel);
  const canvas = $("#view");
  const ctx = canvas.getContext("2d");
  let dpr = window.devicePixelRatio || 1;

  // ---------------------------------------------------------------------------------------------
  // Server calls, status line.

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, url, body) {
    const opts = { method, headers: {} };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, opts);
    } catch (e) {
      throw new ApiError(0, `the server does not answer (${e.message}); is sam-jax annotate still running?`);
    }
    let data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  const q = (name) => encodeURIComponent(name);
  let statusTimer = null;

  function setStatus(text, kind = "") {
    const el = $("#status");
    el.textContent = text;
    el.className = kind;
    clearTimeout(statusTimer);
    if (kind === "") statusTimer = setTimeout(() => { if (el.textContent === text) el.textContent = ""; }, 8000);
  }

  function showError(e) {
    console.error(e);
    setStatus(e && e.message ? e.message : String(e), "error");
  }

  async function busy(text, fn) {
    S.busy++;
    setStatus(text, "busy");
    try {
      return await fn();
    } finally {
      S.busy--;
      if (S.busy === 0 && $("#status").className === "busy") setStatus("");
    }
  }

  // Every action runs after the previous one finished (a failed action reports and is dropped).
  let queueTail = Promise.resolve();
  function enqueue(fn) {
    const run = queueTail.then(fn).catch(showError);
    queueTail = run;
    return run;
  }

  // ---------------------------------------------------------------------------------------------
  // Document edits, undo/redo, saving.

  const findObject = (id) => (S.doc ? S.doc.objects.find((o) => o.id === id) : undefined) || null;
  const selectedObject = () => (S.selected == null ? null : findObject(S.selected));
  const colorOf = (id) => PALETTE[(id - 1) % PALETTE.length];
  const emptyPrompts = () => ({ points: [], point_labels: [], box: null, mask_index: null, multimask: S.multimask });
  const hasPrompts = (o) => o && (o.prompts.points.length > 0 || o.prompts.box !== null);

  function historyOf() {
    if (!S.histories.has(S.name)) S.histories.set(S.name, { undo: [], redo: [] });
    return S.histories.get(S.name);
  }

  const snapshot = () => ({ objects: S.doc.objects, selected: S.selected, done: S.doc.done });

  /** Apply `change` (which replaces S.doc.objects / S.doc.done / S.selected) as one undo step. */
  function commit(change) {
    const h = historyOf();
    h.undo.push(snapshot());
    if (h.undo.length > HISTORY_LIMIT) h.undo.shift();
    h.redo.length = 0;
    change();
    changed();
  }

  function changed() {
    S.dirty = true;
    scheduleSave();
    renderAll();
  }

  function newObject(fields) {
    const id = S.doc.objects.reduce((m, o) => Math.max(m, o.id), 0) + 1;
    const label = S.label || S.config.labels[0];
    const count = S.doc.objects.filter((o) => o.label === label).length + 1;
    return {
      id, name: `${label} ${count}`, label, hidden: false, source: "prompt", edited: false, score: null,
      prompts: emptyPrompts(), segmentation: null, ...fields,
    };
  }

  function replaceObject(id, fields) {
    S.doc.objects = S.doc.objects.map((o) => (o.id === id ? { ...o, ...fields } : o));
  }

  function undo() {
    enqueue(() => {
      const h = historyOf();
      if (!h.undo.length) return setStatus("nothing to undo");
      h.redo.push(snapshot());
      restore(h.undo.pop());
      setStatus("undone");
    });
  }

  function redo() {
    enqueue(() => {
      const h = historyOf();
      if (!h.redo.length) return setStatus("nothing to redo");
      h.undo.push(snapshot());
      restore(h.redo.pop());
      setStatus("redone");
    });
  }

  function restore(snap) {
    S.doc.objects = snap.objects;
    S.doc.done = snap.done;
    S.selected = findObject(snap.selected) ? snap.selected : null;
    S.candidates = null;
    changed();
  }

  function scheduleSave(delay = 120) {
    clearTimeout(S.saveTimer);
    S.saveTimer = setTimeout(() => { S.saveTimer = null; flushSave().catch(showError); }, delay);
    renderSaveState();
  }

  /** Write the document now (waits for a save in flight first). */
  async function flushSave() {
    if (S.saveTimer) { clearTimeout(S.saveTimer); S.saveTimer = null; }
    while (S.saving) await S.saving;
    if (!S.dirty || !S.doc) return;
    const doc = S.doc, name = S.name;
    S.dirty = false;
    const body = {
      revision: doc.revision,
      done: doc.done,
      objects: doc.objects.filter((o) => o.segmentation).map((o) => ({
        id: o.id, name: o.name, label: o.label, hidden: o.hidden, source: o.source, edited: o.edited,
        score: o.score, prompts: o.prompts, segmentation: o.segmentation,
      })),
    };
    S.saving = (async () => {
      try {
        const r = await api("PUT", `/api/annotations?name=${q(name)}`, body);
        doc.revision = r.revision;
        S.saveError = null;
        const entry = S.images.find((i) => i.name === name);
        if (entry) { entry.objects = r.objects; entry.done = r.done; }
        renderImages();
      } catch (e) {
        S.saveError = e;
        if (doc === S.doc) S.dirty = true;
        showError(new Error(`not saved: ${e.message}`));
        if (e.status !== 409 && e.status !== 400 && doc === S.doc) scheduleSave(3000); // retry while the server is away
      } finally {
        S.saving = null;
        renderSaveState();
      }
    })();
    renderSaveState();
    await S.saving;
  }

  function renderSaveState() {
    const el = $("#save-state");
    if (S.saveError) { el.textContent = "not saved"; el.className = "error"; }
    else if (S.dirty || S.saving || S.saveTimer) { el.textContent = "saving…"; el.className = "pending"; }
    else { el.textContent = "saved"; el.className = ""; }
  }

  // ---------------------------------------------------------------------------------------------
  // Images.

  async function loadImages() {
    const data = await api("GET", "/api/images");
    S.images = data.images;
    renderImages();
  }

  async function loadBitmap(name) {
    const response = await fetch(`/api/image?name=${q(name)}`);
    if (!response.ok) {
      let message = `${response.status}`;
      try { message = (await response.json()).error; } catch (e) { /* keep the status */ }
      throw new ApiError(response.status, `cannot load ${name}: ${message}`);
    }
    return createImageBitmap(await response.blob());
  }

  async function openImage(index) {
    if (index < 0 || index >= S.images.length) return;
    performance.mark("sam-jax:open", { detail: { name: S.images[index].name } });
    await flushSave();
    const name = S.images[index].name;
    const epoch = ++S.epoch;
    const [doc, bitmap] = await busy(`opening ${name}…`, () =>
      Promise.all([api("GET", `/api/annotations?name=${q(name)}`), loadBitmap(name)]));
    if (epoch !== S.epoch) return;
    Object.assign(S, {
      index, name, doc, bitmap, width: doc.width, height: doc.height, selected: null, candidates: null,
      pending: null, proposals: null, edit: null, dirty: false, saveError: null,
    });
    overlays.clear();
    if (bitmap.width !== doc.width || bitmap.height !== doc.height) {
      showError(new Error(`the browser decoded ${name} as ${bitmap.width}x${bitmap.height}, the model sees ` +
        `${doc.width}x${doc.height}: masks will not line up`));
    }
    window.history.replaceState(null, "", `#${q(name)}`);
    fitView();
    renderAll();
    const embedding = busy("computing the image embedding…", () => api("POST", "/api/embed", { name }))
      .then((r) => {
        performance.mark("sam-jax:embedded", { detail: { name, embedding: r.embedding, seconds: r.seconds } });
        if (epoch !== S.epoch) return;
        const how = { computed: "computed", disk: "from the disk cache", memory: "in memory" }[r.embedding];
        setStatus(`${name}: ${r.width}x${r.height}, embedding ${how} (${r.seconds.toFixed(2)} s)`);
      })
      .catch(showError);
    S.embedding = embedding;
  }

  function step(delta) {
    enqueue(() => openImage(Math.min(Math.max(S.index + delta, 0), S.images.length - 1)));
  }

  // ---------------------------------------------------------------------------------------------
  // Prompts -> masks.

  async function predict(prompts) {
    return busy("segmenting…", () => api("POST", "/api/predict", {
      name: S.name, points: prompts.points, point_labels: prompts.point_labels, box: prompts.box,
      multimask: prompts.multimask,
    }));
  }

  /** Run `prompts` for object `id` (null: a new object) and commit the best candidate; `input` is the
   * timestamp of the click or drag that asked for it (for the "sam-jax:click-to-mask" measure). */
  async function runPrompts(id, prompts, input = null) {
    const epoch = S.epoch;
    S.pending = { id, prompts };
    render();
    let res;
    try {
      res = await predict(prompts);
    } finally {
      if (epoch === S.epoch) { S.pending = null; render(); }
    }
    if (epoch !== S.epoch) return;
    const k = res.best;
    const fields = {
      prompts: { ...prompts, mask_index: prompts.multimask ? k : null }, segmentation: res.masks[k].segmentation,
      score: res.masks[k].score, edited: false, source: "prompt",
    };
    commit(() => {
      if (id !== null && findObject(id)) {
        replaceObject(id, fields);
      } else {
        const o = newObject(fields);
        S.doc.objects = [...S.doc.objects, o];
        id = o.id;
      }
      S.selected = id;
    });
    S.painting = { id, counts: fields.segmentation.counts, input };
    S.candidates = { id, masks: res.masks };
    renderCandidates();
  }

  function addPoint(x, y, label, input = null) {
    enqueue(async () => {
      if (!S.doc) return;
      const o = selectedObject();
      const base = o ? o.prompts : emptyPrompts();
      const prompts = {
        ...base, multimask: S.multimask,
        points: [...base.points, [round2(x), round2(y)]], point_labels: [...base.point_labels, label],
      };
      await runPrompts(o ? o.id : null, prompts, input);
    });
  }

  function setBox(box, input = null) {
    enqueue(async () => {
      if (!S.doc) return;
      const o = selectedObject();
      const base = o ? o.prompts : emptyPrompts();
      await runPrompts(o ? o.id : null, { ...base, multimask: S.multimask, box: box.map(round2) }, input);
    });
  }

  function chooseCandidate(k) {
    enqueue(async () => {
      const o = selectedObject();
      if (!o) return setStatus("select an object first");
      if (!S.candidates || S.candidates.id !== o.id) {
        if (!hasPrompts(o)) return setStatus("this object has no prompts to choose a candidate from");
        const res = await predict(o.prompts); // e.g. after a reload: the candidates are not saved
        S.candidates = { id: o.id, masks: res.masks };
      }
      const m = S.candidates.masks[k];
      if (!m) return setStatus("only one mask: turn on 3 candidates (m) and click again");
      commit(() => replaceObject(o.id, {
        segmentation: m.segmentation, score: m.score, edited: false, prompts: { ...o.prompts, mask_index: k },
      }));
    });
  }

  const round2 = (v) => Math.round(v * 100) / 100;

  // ---------------------------------------------------------------------------------------------
  // Object commands.

  function select(id) {
    S.selected = id;
    S.candidates = S.candidates && S.candidates.id === id ? S.candidates : null;
    renderAll();
  }

  function deselect() {
    S.selected = null;
    S.candidates = null;
    renderAll();
  }

  function deleteSelected() {
    enqueue(() => {
      const o = selectedObject();
      if (!o) return setStatus("select an object to delete");
      commit(() => { S.doc.objects = S.doc.objects.filter((x) => x.id !== o.id); S.selected = null; });
      setStatus(`deleted ${o.name}`);
    });
  }

  function toggleHidden(id) {
    enqueue(() => {
      const o = findObject(id);
      if (o) commit(() => replaceObject(id, { hidden: !o.hidden }));
    });
  }

  function showAll() {
    enqueue(() => commit(() => { S.doc.objects = S.doc.objects.map((o) => (o.hidden ? { ...o, hidden: false } : o)); }));
  }

  function setField(id, fields) {
    enqueue(() => { if (findObject(id)) commit(() => replaceObject(id, fields)); });
  }

  function cycleLabel() {
    const labels = allLabels();
    const o = selectedObject();
    if (o) {
      setField(o.id, { label: labels[(labels.indexOf(o.label) + 1) % labels.length] });
    } else {
      S.label = labels[(labels.indexOf(S.label) + 1) % labels.length];
      renderToolbar();
    }
  }

  function cycleSelection(delta) {
    const objs = S.doc ? S.doc.objects : [];
    if (!objs.length) return;
    const i = objs.findIndex((o) => o.id === S.selected);
    const j = i < 0 ? (delta > 0 ? 0 : objs.length - 1) : (i + delta + objs.length) % objs.length;
    select(objs[j].id);
  }

  function toggleDone() {
    enqueue(() => { if (S.doc) commit(() => { S.doc.done = !S.doc.done; }); });
  }

  function objectAt(x, y) {
    // Topmost (last drawn) visible object containing the pixel.
    const objs = S.doc.objects.filter((o) => !o.hidden && o.segmentation);
    for (let i = objs.length - 1; i >= 0; i--) if (rleContains(objs[i].segmentation, x, y)) return objs[i];
    return null;
  }

  // ---------------------------------------------------------------------------------------------
  // Segment everything.

  function segmentEverything() {
    enqueue(async () => {
      if (!S.doc) return;
      const epoch = S.epoch;
      const body = {
        name: S.name,
        points_per_side: Number($("#auto-points").value),
        pred_iou_thresh: Number($("#auto-iou").value),
        stability_score_thresh: Number($("#auto-stability").value),
      };
      const res = await busy("segmenting everything…", () => api("POST", "/api/auto", body));
      if (epoch !== S.epoch) return;
      S.proposals = res.proposals.map((p, i) => ({ ...p, pid: i, keep: true }));
      S.selected = null;
      S.candidates = null;
      renderAll();
      setStatus(S.proposals.length
        ? `${S.proposals.length} proposals: click masks to keep or discard, Enter adds the kept ones, Esc cancels`
        : "no proposals: lower the thresholds in the settings below");
    });
  }

  function addProposals() {
    enqueue(() => {
      if (!S.proposals) return;
      const kept = S.proposals.filter((p) => p.keep);
      S.proposals = null;
      if (!kept.length) return renderAll();
      commit(() => {
        for (const p of kept) {
          const prompts = { ...emptyPrompts(), multimask: true };
          if (p.point) { prompts.points = [p.point.map(round2)]; prompts.point_labels = [1]; }
          S.doc.objects = [...S.doc.objects, newObject({
            source: "auto", score: p.predicted_iou, segmentation: p.segmentation, prompts,
          })];
        }
        S.selected = null;
      });
      setStatus(`added ${kept.length} objects`);
    });
  }

  function toggleProposalAt(x, y) {
    const hits = S.proposals.filter((p) => rleContains(p.segmentation, x, y));
    if (!hits.length) return;
    const p = hits.reduce((a, b) => (a.area <= b.area ? a : b)); // the smallest one under the cursor
    p.keep = !p.keep;
    renderAll();
  }

  // ---------------------------------------------------------------------------------------------
  // Brush and eraser.

  function startStroke(x, y) {
    const o = selectedObject();
    const w = S.width, h = S.height;
    const mask = o && o.segmentation ? decodeRle(o.segmentation) : new Uint8Array(w * h);
    const layer = document.createElement("canvas");
    layer.width = w; layer.height = h;
    const lctx = layer.getContext("2d");
    const data = lctx.createImageData(w, h);
    const [r, g, b] = o ? colorOf(o.id) : colorOf(S.doc.objects.reduce((m, x) => Math.max(m, x.id), 0) + 1);
    for (let i = 0; i < mask.length; i++) {
      const j = 4 * i;
      data.data[j] = r; data.data[j + 1] = g; data.data[j + 2] = b; data.data[j + 3] = mask[i] ? 140 : 0;
    }
    lctx.putImageData(data, 0, 0);
    S.edit = { id: o ? o.id : null, mask, value: S.tool === "brush" ? 1 : 0, layer, lctx, data, last: null, changed: false };
    strokeTo(x, y);
  }

  function strokeTo(x, y) {
    const e = S.edit;
    const rad = S.brush / 2;
    const from = e.last || [x, y];
    const dist = Math.hypot(x - from[0], y - from[1]);
    const steps = Math.max(1, Math.ceil(dist / Math.max(rad / 2, 0.5)));
    for (let i = 1; i <= steps; i++) {
      dab(from[0] + ((x - from[0]) * i) / steps, from[1] + ((y - from[1]) * i) / steps, rad);
    }
    e.last = [x, y];
    render();
  }

  function dab(cx, cy, rad) {
    const e = S.edit, w = S.width, h = S.height;
    const x0 = Math.max(0, Math.floor(cx - rad)), x1 = Math.min(w - 1, Math.ceil(cx + rad));
    const y0 = Math.max(0, Math.floor(cy - rad)), y1 = Math.min(h - 1, Math.ceil(cy + rad));
    if (x0 > x1 || y0 > y1) return;
    const r2 = rad * rad;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy > r2) continue;
        const i = y * w + x;
        if (e.mask[i] !== e.value) { e.mask[i] = e.value; e.changed = true; }
        e.data.data[4 * i + 3] = e.value ? 140 : 0;
      }
    }
    e.lctx.putImageData(e.data, 0, 0, x0, y0, x1 - x0 + 1, y1 - y0 + 1);
  }

  function endStroke() {
    const e = S.edit;
    S.edit = null;
    if (!e || !e.changed) return render();
    const segmentation = encodeMask(e.mask, S.height, S.width);
    enqueue(() => commit(() => {
      if (e.id !== null && findObject(e.id)) {
        replaceObject(e.id, { segmentation, edited: true });
      } else {
        const o = newObject({ source: "manual", segmentation, edited: true });
        S.doc.objects = [...S.doc.objects, o];
        S.selected = o.id;
      }
    }));
  }

  // ---------------------------------------------------------------------------------------------
  // Drawing.

  // Per object: a canvas the size of its mask's bounding box, filled and outlined in its colour.
  const overlays = new Map(); // key -> {canvas, x, y}

  function buildOverlay(rle, color, fillAlpha, outline) {
    const [h, w] = rle.size;
    const mask = decodeRle(rle);
    let x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (let y = 0; y < h; y++) {
      const row = y * w;
      for (let x = 0; x < w; x++) {
        if (mask[row + x]) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
      }
    }
    if (x1 < 0) return null;
    const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
    const c = document.createElement("canvas");
    c.width = bw; c.height = bh;
    const cctx = c.getContext("2d");
    const img = cctx.createImageData(bw, bh);
    const [r, g, b] = color;
    const [or, og, ob] = outline;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const i = y * w + x;
        if (!mask[i]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
        const j = 4 * ((y - y0) * bw + (x - x0));
        if (edge) { img.data[j] = or; img.data[j + 1] = og; img.data[j + 2] = ob; img.data[j + 3] = 255; }
        else { img.data[j] = r; img.data[j + 1] = g; img.data[j + 2] = b; img.data[j + 3] = fillAlpha; }
      }
    }
    cctx.putImageData(img, 0, 0);
    return { canvas: c, x: x0, y: y0 };
  }

  function overlayFor(key, rle, color, fillAlpha, outline) {
    const full = `${key}|${fillAlpha}|${outline}|${color}|${rle.counts}`;
    let entry = overlays.get(full);
    if (entry === undefined) {
      entry = buildOverlay(rle, color, fillAlpha, outline);
      if (overlays.size > 400) overlays.clear();
      overlays.set(full, entry);
    }
    return entry;
  }

  let frame = 0;
  function render() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); });
  }

  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!S.bitmap) return;
    const v = S.view;
    ctx.setTransform(dpr * v.s, 0, 0, dpr * v.s, dpr * v.x, dpr * v.y);
    // Zoomed in: crisp pixels, so masks can be checked pixel by pixel; zoomed out: smooth.
    ctx.imageSmoothingEnabled = v.s < 1;
    ctx.drawImage(S.bitmap, 0, 0);

    for (const o of S.doc.objects) {
      if (o.hidden || !o.segmentation || (S.edit && S.edit.id === o.id)) continue;
      const sel = o.id === S.selected;
      const ov = overlayFor(`o${o.id}`, o.segmentation, colorOf(o.id), sel ? 150 : 100, sel ? [255, 255, 255] : colorOf(o.id));
      if (ov) ctx.drawImage(ov.canvas, ov.x, ov.y);
    }
    if (S.proposals) {
      for (const p of S.proposals) {
        const color = PALETTE[p.pid % PALETTE.length];
        if (p.keep) {
          const ov = overlayFor(`p${p.pid}`, p.segmentation, color, 110, color);
          if (ov) ctx.drawImage(ov.canvas, ov.x, ov.y);
        } else {
          ctx.save();
          ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
          ctx.setLineDash([4, 4]);
          ctx.strokeStyle = `rgba(${color.join(",")},0.7)`;
          const [bx, by, bw, bh] = p.bbox;
          ctx.strokeRect(v.x + bx * v.s, v.y + by * v.s, bw * v.s, bh * v.s);
          ctx.restore();
        }
      }
    }
    if (S.edit) ctx.drawImage(S.edit.layer, 0, 0);
    if (S.painting) markPainted();

    // Prompts of the selected (or pending) object, in screen pixels so they keep their size.
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const shown = S.pending ? S.pending.prompts : selectedObject() && selectedObject().prompts;
    if (shown) drawPrompts(shown, S.pending ? 0.6 : 1);
    if (drag && drag.mode === "box") {
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5;
      const a = imageToScreen(drag.x0, drag.y0), b = imageToScreen(drag.x1, drag.y1);
      ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
      ctx.setLineDash([]);
    }
    if ((S.tool === "brush" || S.tool === "eraser") && pointer) {
      ctx.strokeStyle = S.tool === "brush" ? "#fff" : "#ff6b6b";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.arc(pointer.sx, pointer.sy, Math.max(1, (S.brush / 2) * v.s), 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  /** User Timing entries for latency tests and examples/annotate_latency.py: the mark
   * "sam-jax:mask-painted" once a predicted mask is on the canvas, and the measure
   * "sam-jax:click-to-mask" from the pointer event that asked for it to that moment. */
  function markPainted() {
    const p = S.painting;
    S.painting = null;
    const o = findObject(p.id);
    if (!o || !o.segmentation || o.segmentation.counts !== p.counts) return; // replaced before it was drawn
    performance.mark("sam-jax:mask-painted", { detail: { id: p.id, input: p.input } });
    if (p.input !== null) performance.measure("sam-jax:click-to-mask", { start: p.input, end: performance.now(), detail: { id: p.id } });
  }

  function drawPrompts(p, alpha) {
    ctx.globalAlpha = alpha;
    if (p.box) {
      const a = imageToScreen(p.box[0], p.box[1]), b = imageToScreen(p.box[2], p.box[3]);
      ctx.strokeStyle = "#ffd166";
      ctx.lineWidth = 2;
      ctx.strokeRect(a.x, a.y, b.x - a.x, b.y - a.y);
    }
    p.points.forEach(([x, y], i) => {
      const s = imageToScreen(x, y);
      ctx.beginPath();
      ctx.arc(s.x, s.y, 5, 0, 2 * Math.PI);
      ctx.fillStyle = p.point_labels[i] ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    });
    ctx.globalAlpha = 1;
  }

  // ---------------------------------------------------------------------------------------------
  // Panels.

  function allLabels() {
    const labels = [...S.config.labels];
    if (S.doc) for (const o of S.doc.objects) if (!labels.includes(o.label)) labels.push(o.label);
    return labels;
  }

  function el(tag, props = {}, children = []) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  function renderImages() {
    const list = $("#image-list");
    const filter = $("#image-filter").value.toLowerCase();
    list.replaceChildren();
    S.images.forEach((img, i) => {
      if (filter && !img.name.toLowerCase().includes(filter)) return;
      const annotated = img.objects > 0 || img.done;
      const li = el("li", {
        class: `${i === S.index ? "current" : ""} ${annotated ? "annotated" : ""}`,
        title: img.name,
        onclick: () => enqueue(() => openImage(i)),
      }, [
        el("span", { class: "mark", textContent: "✓" }),
        el("span", { class: "name", textContent: img.name }),
        el("span", { class: "badge", textContent: img.objects ? String(img.objects) : "" }),
      ]);
      li.dataset.name = img.name;
      list.append(li);
      if (i === S.index) requestAnimationFrame(() => li.scrollIntoView({ block: "nearest" }));
    });
    const done = S.images.filter((i) => i.objects > 0 || i.done).length;
    $("#progress-text").textContent = `${done} / ${S.images.length} annotated`;
    $("#progress").max = Math.max(1, S.images.length);
    $("#progress").value = done;
  }

  function renderToolbar() {
    const select = $("#label-select");
    const labels = allLabels();
    if (!S.label || !labels.includes(S.label)) S.label = labels[0];
    select.replaceChildren(...labels.map((l) => el("option", { value: l, textContent: l })));
    select.value = S.label;
    for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === S.tool);
    $("#brush-size").value = S.brush;
    $("#multimask").checked = S.multimask;
    $("#done").checked = !!(S.doc && S.doc.done);
    $("#image-title").textContent = S.name ? `${S.name} (${S.index + 1}/${S.images.length})` : "";
    canvas.classList.toggle("brush", S.tool !== "prompt");
  }

  function renderObjects() {
    const list = $("#objects");
    const labels = allLabels();
    list.replaceChildren();
    const objs = S.doc ? S.doc.objects : [];
    $("#object-count").textContent = objs.length ? `(${objs.length})` : "";
    for (const o of objs) {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = `rgb(${colorOf(o.id).join(",")})`;
      const name = el("input", {
        type: "text", class: "obj-name", value: o.name, title: "Name (Enter to apply)",
        onchange: (e) => setField(o.id, { name: e.target.value.slice(0, 200) }),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === "Escape") e.target.blur(); },
      });
      const label = el("select", {
        class: "obj-label", title: "Label", onchange: (e) => setField(o.id, { label: e.target.value }),
      }, labels.map((l) => el("option", { value: l, textContent: l })));
      label.value = o.label;
      const score = el("span", { class: "score", textContent: o.score == null ? "" : o.score.toFixed(2), title: "Predicted IoU" });
      const hide = el("button", {
        type: "button", class: "obj-hide", textContent: o.hidden ? "show" : "hide", title: "Hide or show (h)",
        onclick: (e) => { e.stopPropagation(); toggleHidden(o.id); },
      });
      const del = el("button", {
        type: "button", class: "obj-del", textContent: "✕", title: "Delete (Del)",
        onclick: (e) => { e.stopPropagation(); select(o.id); deleteSelected(); },
      });
      const li = el("li", {
        class: `${o.id === S.selected ? "selected" : ""} ${o.hidden ? "hidden-object" : ""}`,
        onclick: (e) => { if (e.target === li || e.target === swatch || e.target === score) select(o.id === S.selected ? null : o.id); },
      }, [swatch, name, label, score, hide, del]);
      li.dataset.id = o.id;
      list.append(li);
    }
  }

  function renderCandidates() {
    const box = $("#candidates");
    const o = selectedObject();
    if (!o) {
      box.replaceChildren(el("p", { class: "hint", textContent: "Click on the image to segment an object." }));
      return;
    }
    if (!S.candidates || S.candidates.id !== o.id) {
      box.replaceChildren(el("p", {
        class: "hint",
        textContent: hasPrompts(o) ? "Press 1, 2 or 3 to recompute and choose a candidate." : "Drawn by hand.",
      }));
      return;
    }
    const tw = 88, scale = Math.min(tw / S.width, tw / S.height);
    box.replaceChildren(...S.candidates.masks.map((m, k) => {
      const c = el("canvas", { width: Math.max(1, Math.round(S.width * scale)), height: Math.max(1, Math.round(S.height * scale)) });
      const cc = c.getContext("2d");
      cc.drawImage(S.bitmap, 0, 0, c.width, c.height);
      const ov = overlayFor(`c${k}`, m.segmentation, colorOf(o.id), 170, colorOf(o.id));
      if (ov) cc.drawImage(ov.canvas, ov.x * scale, ov.y * scale, ov.canvas.width * scale, ov.canvas.height * scale);
      const chosen = o.segmentation && o.segmentation.counts === m.segmentation.counts;
      return el("button", {
        type: "button", class: chosen ? "chosen" : "", title: `Candidate ${k + 1} (key ${k + 1})`,
        onclick: () => chooseCandidate(k),
      }, [c, el("span", { textContent: `${k + 1} · ${m.score.toFixed(2)}` })]);
    }));
  }

  function renderProposals() {
    const panel = $("#proposals-panel");
    panel.hidden = !S.proposals;
    if (!S.proposals) return;
    const kept = S.proposals.filter((p) => p.keep).length;
    $("#proposal-count").textContent = `(${kept} of ${S.proposals.length} kept)`;
    $("#proposals").replaceChildren(...S.proposals.map((p) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = `rgb(${PALETTE[p.pid % PALETTE.length].join(",")})`;
      return el("li", {
        class: p.keep ? "" : "discarded",
        onclick: () => { p.keep = !p.keep; renderAll(); },
      }, [
        el("input", { type: "checkbox", checked: p.keep, tabIndex: -1 }), swatch,
        el("span", { textContent: `#${p.pid + 1} · ${p.area} px · IoU ${p.predicted_iou.toFixed(2)}` }),
      ]);
    }));
  }

  function renderAll() {
    renderToolbar();
    renderObjects();
    renderCandidates();
    renderProposals();
    renderSaveState();
    render();
  }

  // ---------------------------------------------------------------------------------------------
  // View: zoom and pan.

  function resizeCanvas() {
    const r = canvas.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    render();
  }

  function fitView() {
    if (!S.width) return;
    const r = canvas.getBoundingClientRect();
    const s = Math.min((r.width - 20) / S.width, (r.height - 20) / S.height);
    const scale = s > 0 ? s : 1;
    S.view = { s: scale, x: (r.width - S.width * scale) / 2, y: (r.height - S.height * scale) / 2 };
    render();
  }

  function zoomAt(factor, sx, sy) {
    const v = S.view;
    const s = Math.min(Math.max(v.s * factor, 0.02), 64);
    S.view = { s, x: sx - ((sx - v.x) * s) / v.s, y: sy - ((sy - v.y) * s) / v.s };
    render();
  }

  const screenToImage = (sx, sy) => ({ x: (sx - S.view.x) / S.view.s, y: (sy - S.view.y) / S.view.s });
  const imageToScreen = (x, y) => ({ x: S.view.x + x * S.view.s, y: S.view.y + y * S.view.s });
  const clampX = (x) => Math.min(Math.max(x, 0), S.width);
  const clampY = (y) => Math.min(Math.max(y, 0), S.height);

  // ---------------------------------------------------------------------------------------------
  // Mouse.

  let drag = null; // {mode: "click" | "box" | "pan" | "stroke", ...}
  let pointer = null; // last pointer position {sx, sy}
  let spaceDown = false;

  function local(e) {
    const r = canvas.getBoundingClientRect();
    return { sx: e.clientX - r.left, sy: e.clientY - r.top };
  }

  canvas.addEventListener("contextmenu", (e) => e.preventDefault());

  canvas.addEventListener("pointerdown", (e) => {
    if (!S.bitmap) return;
    canvas.focus();
    const { sx, sy } = local(e);
    const p = screenToImage(sx, sy);
    canvas.setPointerCapture(e.pointerId);
    if (e.button === 1 || (e.button === 0 && spaceDown)) {
      drag = { mode: "pan", sx, sy, vx: S.view.x, vy: S.view.y };
      canvas.classList.add("panning");
      e.preventDefault();
    } else if (e.button === 2) {
      drag = { mode: "negative", x0: p.x, y0: p.y, t: e.timeStamp };
    } else if (e.button === 0 && S.tool !== "prompt" && !S.proposals) {
      drag = { mode: "stroke" };
      startStroke(p.x, p.y);
    } else if (e.button === 0) {
      drag = {
        mode: "click", sx, sy, x0: p.x, y0: p.y, x1: p.x, y1: p.y, shift: e.shiftKey, pick: e.altKey || e.ctrlKey || e.metaKey,
        t: e.timeStamp,
      };
    }
  });

  canvas.addEventListener("pointermove", (e) => {
    const { sx, sy } = local(e);
    pointer = { sx, sy };
    const p = screenToImage(sx, sy);
    if (S.width) {
      const inside = p.x >= 0 && p.y >= 0 && p.x < S.width && p.y < S.height;
      $("#coords").textContent = inside ? `x ${p.x.toFixed(1)}  y ${p.y.toFixed(1)}  zoom ${(S.view.s * 100).toFixed(0)}%` : "";
    }
    if (!drag) { if (S.tool !== "prompt") render(); return; }
    if (drag.mode === "pan") {
      S.view = { ...S.view, x: drag.vx + sx - drag.sx, y: drag.vy + sy - drag.sy };
      render();
    } else if (drag.mode === "stroke") {
      strokeTo(p.x, p.y);
    } else if (drag.mode === "click" || drag.mode === "box") {
      drag.x1 = p.x; drag.y1 = p.y;
      if (drag.mode === "click" && !drag.pick && Math.hypot(sx - drag.sx, sy - drag.sy) > 5 && !S.proposals) drag.mode = "box";
      render();
    }
  });

  function finishDrag(e, cancelled) {
    const d = drag;
    drag = null;
    canvas.classList.remove("panning");
    if (!d) return;
    if (d.mode === "stroke") return endStroke();
    if (cancelled) return render();
    const inImage = (x, y) => x >= 0 && y >= 0 && x <= S.width && y <= S.height;
    if (d.mode === "negative") {
      if (inImage(d.x0, d.y0)) addPoint(d.x0, d.y0, 0, d.t);
    } else if (d.mode === "box") {
      const box = [clampX(Math.min(d.x0, d.x1)), clampY(Math.min(d.y0, d.y1)), clampX(Math.max(d.x0, d.x1)), clampY(Math.max(d.y0, d.y1))];
      if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) setBox(box, e.timeStamp);
      render();
    } else if (d.mode === "click") {
      if (!inImage(d.x0, d.y0)) return;
      if (S.proposals) toggleProposalAt(d.x0, d.y0);
      else if (d.pick) { const o = objectAt(d.x0, d.y0); o ? select(o.id) : deselect(); }
      else addPoint(d.x0, d.y0, d.shift ? 0 : 1, d.t);
    }
  }

  canvas.addEventListener("pointerup", (e) => finishDrag(e, false));
  canvas.addEventListener("pointercancel", (e) => finishDrag(e, true));
  canvas.addEventListener("pointerleave", () => { pointer = null; if (S.tool !== "prompt") render(); });

  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const { sx, sy } = local(e);
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    zoomAt(Math.exp(-e.deltaY * unit * 0.0015), sx, sy);
  }, { passive: false });

  // ---------------------------------------------------------------------------------------------
  // Keyboard.

  function setTool(tool) {
    S.tool = tool;
    renderToolbar();
    render();
  }

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const typing = t instanceof HTMLInputElement && t.type !== "checkbox" && t.type !== "range" || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
    if (typing) return;
    const key = e.key;
    const mod = e.ctrlKey || e.metaKey;
    let handled = true;
    if (mod && (key === "z" || key === "Z")) { e.shiftKey ? redo() : undo(); }
    else if (mod && (key === "y" || key === "Y")) redo();
    else if (mod || e.altKey) handled = false;
    else if (key === " ") spaceDown = true;
    else if (key === "z") undo();
    else if (key === "y") redo();
    else if (key === "n") { deselect(); setStatus("new object: click or drag on the image"); }
    else if (key === "Enter") { if (S.proposals) addProposals(); else { deselect(); setStatus("accepted"); } }
    else if (key === "Escape") { if (S.proposals) { S.proposals = null; renderAll(); setStatus("proposals discarded"); } else deselect(); }
    else if (key === "1" || key === "2" || key === "3") chooseCandidate(Number(key) - 1);
    else if (key === "m") { S.multimask = !S.multimask; renderToolbar(); setStatus(S.multimask ? "3 mask candidates" : "one mask per prompt"); }
    else if (key === "h") { const o = selectedObject(); o ? toggleHidden(o.id) : setStatus("select an object to hide"); }
    else if (key === "H") showAll();
    else if (key === "Delete" || key === "Backspace") deleteSelected();
    else if (key === "Tab") cycleSelection(e.shiftKey ? -1 : 1);
    else if (key === "l") cycleLabel();
    else if (key === "ArrowRight" || key === "j" || key === "PageDown") step(1);
    else if (key === "ArrowLeft" || key === "k" || key === "PageUp") step(-1);
    else if (key === "a") segmentEverything();
    else if (key === "v") setTool("prompt");
    else if (key === "b") setTool("brush");
    else if (key === "e") setTool("eraser");
    else if (key === "[") { S.brush = Math.max(1, Math.round(S.brush / 1.25)); renderToolbar(); render(); }
    else if (key === "]") { S.brush = Math.min(200, Math.round(S.brush * 1.25) + 1); renderToolbar(); render(); }
    else if (key === "d") toggleDone();
    else if (key === "f" || key === "0") fitView();
    else if (key === "+" || key === "=") { const r = canvas.getBoundingClientRect(); zoomAt(1.25, r.width / 2, r.height / 2); }
    else if (key === "-") { const r = canvas.getBoundingClientRect(); zoomAt(0.8, r.width / 2, r.height / 2); }
    else handled = false;
    if (handled) e.preventDefault();
  });

  document.addEventListener("keyup", (e) => { if (e.key === " ") spaceDown = false; });
  window.addEventListener("blur", () => { spaceDown = false; });

  // ---------------------------------------------------------------------------------------------
  // Buttons.

  function wireButtons() {
    for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
    $("#brush-size").addEventListener("input", (e) => { S.brush = Number(e.target.value); render(); });
    $("#label-select").addEventListener("change", (e) => { S.label = e.target.value; });
    $("#multimask").addEventListener("change", (e) => { S.multimask = e.target.checked; });
    $("#btn-new").addEventListener("click", () => deselect());
    $("#btn-accept").addEventListener("click", () => deselect());
    $("#btn-undo").addEventListener("click", undo);
    $("#btn-redo").addEventListener("click", redo);
    $("#btn-auto").addEventListener("click", segmentEverything);
    $("#btn-fit").addEventListener("click", fitView);
    $("#done").addEventListener("change", (e) => { e.preventDefault(); toggleDone(); });
    $("#btn-add-proposals").addEventListener("click", addProposals);
    $("#btn-keep-all").addEventListener("click", () => { S.proposals.forEach((p) => { p.keep = true; }); renderAll(); });
    $("#btn-keep-none").addEventListener("click", () => { S.proposals.forEach((p) => { p.keep = false; }); renderAll(); });
    $("#btn-cancel-proposals").addEventListener("click", () => { S.proposals = null; renderAll(); });
    $("#image-filter").addEventListener("input", renderImages);
    // A changed drop-down gives the keyboard back to the shortcuts.
    document.addEventListener("change", (e) => { if (e.target instanceof HTMLSelectElement) e.target.blur(); });
    // Buttons must not keep the focus: Space and Enter belong to the canvas shortcuts.
    for (const b of document.querySelectorAll("button, input[type=checkbox]")) b.addEventListener("mouseup", () => b.blur());
  }

  window.addEventListener("resize", () => { resizeCanvas(); });
  window.addEventListener("beforeunload", (e) => {
    if (S.dirty || S.saving || S.saveTimer) {
      flushSave();
      e.preventDefault();
      e.returnValue = "";
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Start, and hooks for automated tests.

  async function start() {
    wireButtons();
    resizeCanvas();
    S.config = await api("GET", "/api/config");
    $("#model-name").textContent = `model: ${S.config.model}`;
    S.label = S.config.labels[0];
    await loadImages();
    renderAll();
    if (!S.images.length) return setStatus("no images in this folder", "error");
    const wanted = decodeURIComponent(location.hash.slice(1));
    const i = Math.max(0, S.images.findIndex((img) => img.name === wanted));
    await openImage(i);
  }

  async function whenIdle() {
    for (let i = 0; i < 200; i++) {
      const tail = queueTail;
      await tail;
      await S.embedding;
      await flushSave();
      if (tail === queueTail && !S.saving && !S.saveTimer && !S.dirty) break;
    }
    await new Promise((r) => requestAnimationFrame(() => r()));
    return { saveError: S.saveError ? S.saveError.message : null, objects: S.doc ? S.doc.objects.length : 0 };
  }

  const ready = enqueue(start);
  window.annotator = {
    state: S,
    ready,
    whenIdle,
    /** Client (page) coordinates of image pixel position (x, y). */
    imageToClient(x, y) {
      const r = canvas.getBoundingClientRect();
      const s = imageToScreen(x, y);
      return { x: r.left + s.x, y: r.top + s.y };
    },
    /** Canvas backing-store pixel of image position (x, y). */
    imageToCanvas(x, y) {
      const s = imageToScreen(x, y);
      return { x: Math.floor(s.x * dpr), y: Math.floor(s.y * dpr) };
    },
    setView(s, x, y) { S.view = { s, x, y }; render(); },
    rle: { decode: decodeRle, encode: encodeMask, area: rleArea, stringToCounts, countsToString },
  };
})();
