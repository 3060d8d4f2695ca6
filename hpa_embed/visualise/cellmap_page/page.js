
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const D = JSON.parse($("cellmap-data").textContent);
  const N = D.n, K = D.k, T = D.thumbs;
  const X = new Float32Array(N), Y = new Float32Array(N);
  for (let i = 0; i < N; i++) { X[i] = D.x[i] / D.quant; Y[i] = D.y[i] / D.quant; }
  document.body.dataset.cellCount = String(N);
  $("title").textContent = D.title;
  $("count").textContent = N.toLocaleString("en") + " cells";

  // ------------------------------------------------------------------ colour modes
  const hexRgb = (h) => [1, 3, 5].map((p) => parseInt(h.slice(p, p + 2), 16));
  const modes = D.modes.map((m) => {
    const codes = m.column ? D.columns[m.column].codes : m.codes;
    const counts = new Int32Array(m.categories.length);
    for (let i = 0; i < N; i++) counts[codes[i]]++;
    let order = m.categories.map((_, c) => c).filter((c) => counts[c] > 0);
    if (m.order === "count") order.sort((a, b) => counts[b] - counts[a]);
    return { key: m.key, label: m.label, categories: m.categories, rgb: m.colours.map(hexRgb),
             colours: m.colours, codes: codes, counts: counts, order: order,
             hidden: new Uint8Array(m.categories.length) };
  });
  let mode = modes[0];
  const visible = (i) => !mode.hidden[mode.codes[i]];

  // ------------------------------------------------------------------ view
  const plot = $("plot"), glCanvas = $("gl"), overlay = $("overlay");
  const ctx = overlay.getContext("2d");
  // the map is centred on OX, in the part of the plot the legend leaves free (when wide enough)
  let W = 1, H = 1, OX = 0.5, dpr = 1, cx = 0.5, cy = 0.5, zoom = 1;
  let freeW = 1;
  const scale = () => Math.min(freeW, H) * 0.92 * zoom;
  const toScreen = (i) => [OX + (X[i] - cx) * scale(), H / 2 - (Y[i] - cy) * scale()];
  const baseSize = Math.max(2, Math.min(9, 40 / Math.pow(N, 0.3)));
  const pointSize = () => Math.min(18, baseSize * Math.sqrt(zoom));

  // ------------------------------------------------------------------ WebGL scatter
  const gl = glCanvas.getContext("webgl", { antialias: false });
  let prog = null, colourBuf = null;
  const colours = new Uint8Array(N * 4);
  if (!gl) {
    const status = $("gl-status");
    status.hidden = false;
    status.textContent = "WebGL is not available: points are not drawn " +
      "(hover, find and neighbours still work).";
  } else {
    const shader = (type, src) => {
      const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER,
      "attribute vec2 a_pos; attribute vec4 a_col; uniform vec2 u_scale, u_offset; uniform float u_size;" +
      "varying vec3 v_col; void main() { v_col = a_col.rgb;" +
      "gl_Position = a_col.a > 0.0 ? vec4(a_pos * u_scale + u_offset, 0.0, 1.0) : vec4(2.0, 2.0, 2.0, 1.0);" +
      "gl_PointSize = u_size; }"));
    gl.attachShader(prog, shader(gl.FRAGMENT_SHADER,
      "precision mediump float; varying vec3 v_col; uniform float u_alpha; void main() {" +
      "vec2 c = gl_PointCoord - 0.5; if (dot(c, c) > 0.25) discard; gl_FragColor = vec4(v_col, u_alpha); }"));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const pos = new Float32Array(N * 2);
    for (let i = 0; i < N; i++) { pos[2 * i] = X[i]; pos[2 * i + 1] = Y[i]; }
    const posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, posBuf); gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
    const aPos = gl.getAttribLocation(prog, "a_pos");
    gl.enableVertexAttribArray(aPos); gl.vertexAttribPointer(aPos, 2, gl.FLOAT, false, 0, 0);
    colourBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, colourBuf);
    const aCol = gl.getAttribLocation(prog, "a_col");
    gl.enableVertexAttribArray(aCol); gl.vertexAttribPointer(aCol, 4, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
  }

  function updateColours() {
    for (let i = 0; i < N; i++) {
      const c = mode.codes[i], rgb = mode.rgb[c];
      colours[4 * i] = rgb[0]; colours[4 * i + 1] = rgb[1]; colours[4 * i + 2] = rgb[2];
      colours[4 * i + 3] = mode.hidden[c] ? 0 : 255;
    }
    if (gl) {
      gl.bindBuffer(gl.ARRAY_BUFFER, colourBuf);
      gl.bufferData(gl.ARRAY_BUFFER, colours, gl.DYNAMIC_DRAW);
    }
    requestDraw();
  }

  function drawPoints() {
    if (!gl) return;
    gl.viewport(0, 0, glCanvas.width, glCanvas.height);
    gl.clearColor(0.071, 0.078, 0.094, 1); gl.clear(gl.COLOR_BUFFER_BIT);
    const s = scale();
    gl.uniform2f(gl.getUniformLocation(prog, "u_scale"), 2 * s / W, 2 * s / H);
    gl.uniform2f(gl.getUniformLocation(prog, "u_offset"), (2 * OX - 2 * s * cx) / W - 1, -2 * s * cy / H);
    gl.uniform1f(gl.getUniformLocation(prog, "u_size"), pointSize() * dpr);
    gl.uniform1f(gl.getUniformLocation(prog, "u_alpha"), N > 20000 ? 0.75 : 0.9);
    gl.drawArrays(gl.POINTS, 0, N);
  }

  function ring(i, radius, colour, width) {
    const [x, y] = toScreen(i);
    ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.lineWidth = width; ctx.strokeStyle = colour; ctx.stroke();
  }

  function drawOverlay() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const r = pointSize() / 2 + 4;
    if (selected >= 0) {
      const [sx, sy] = toScreen(selected);
      ctx.strokeStyle = "rgba(94, 200, 255, 0.45)"; ctx.lineWidth = 1;
      for (const j of neighboursOf(selected)) {
        const [x, y] = toScreen(j);
        ctx.beginPath(); ctx.moveTo(sx, sy); ctx.lineTo(x, y); ctx.stroke();
      }
      for (const j of neighboursOf(selected)) ring(j, r, "#5ec8ff", 1.5);
      ring(selected, r + 2, "#ffd43b", 2.5);
    }
    if (hovered >= 0) ring(hovered, r + 1, "#ffffff", 2);
  }

  // hover and selection redraw only the 2-D overlay; the points are redrawn when the view or
  // the colours change
  let drawQueued = false, pointsDirty = false;
  function requestDraw(points = true) {
    pointsDirty = pointsDirty || points;
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      if (pointsDirty) drawPoints();
      pointsDirty = false;
      drawOverlay();
    });
  }
  const requestOverlay = () => requestDraw(false);

  function resize() {
    const rect = plot.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1;
    W = Math.max(1, rect.width); H = Math.max(1, rect.height);
    const legendW = $("legend-box").offsetWidth + 20;
    freeW = W > 2.5 * legendW ? W - legendW : W;
    OX = W - freeW / 2;
    for (const c of [glCanvas, overlay]) { c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
    drawPoints(); drawOverlay();
  }

  // ------------------------------------------------------------------ picking grid
  const G = Math.max(1, Math.ceil(Math.sqrt(N / 2)));
  const start = new Int32Array(G * G + 1), items = new Int32Array(N);
  {
    const bucket = new Int32Array(N);
    for (let i = 0; i < N; i++) {
      const gx = Math.min(G - 1, Math.floor(X[i] * G)), gy = Math.min(G - 1, Math.floor(Y[i] * G));
      bucket[i] = gy * G + gx; start[bucket[i] + 1]++;
    }
    for (let b = 0; b < G * G; b++) start[b + 1] += start[b];
    const fill = start.slice(0, G * G);
    for (let i = 0; i < N; i++) items[fill[bucket[i]]++] = i;
  }

  /** The visible cell nearest to screen point (px, py) within the point radius + 4 px, or -1. */
  function pick(px, py) {
    const s = scale(), wx = cx + (px - OX) / s, wy = cy - (py - H / 2) / s;
    const r = (pointSize() / 2 + 4) / s;
    const clampG = (v) => Math.max(0, Math.min(G - 1, Math.floor(v * G)));
    const x0 = clampG(wx - r), x1 = clampG(wx + r), y0 = clampG(wy - r), y1 = clampG(wy + r);
    let best = -1, bestD = r * r;
    for (let gy = y0; gy <= y1; gy++) {
      for (let gx = x0; gx <= x1; gx++) {
        const b = gy * G + gx;
        for (let t = start[b]; t < start[b + 1]; t++) {
          const i = items[t], dx = X[i] - wx, dy = Y[i] - wy, d = dx * dx + dy * dy;
          if (d <= bestD && visible(i)) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  // ------------------------------------------------------------------ thumbnails and details
  const sheetCache = { rgby: [], green: [] };
  function setThumb(el, kind, i, px) {
    const slot = D.slot[i], sheet = Math.floor(slot / T.per_sheet), j = slot % T.per_sheet;
    const f = px / T.size, key = kind + ":" + i;
    let img = sheetCache[kind][sheet];
    if (!img) { img = new Image(); img.src = T[kind][sheet]; sheetCache[kind][sheet] = img; }
    el.dataset.cell = key;
    el.dataset.state = "loading";
    const apply = () => {
      if (el.dataset.cell !== key) return;
      el.style.backgroundImage = "url(\"" + img.src + "\")";
      el.style.backgroundSize = (T.per_row * T.size * f) + "px auto";
      el.style.backgroundPosition = (-(j % T.per_row) * T.size * f) + "px " +
        (-Math.floor(j / T.per_row) * T.size * f) + "px";
      el.dataset.state = "loaded";
    };
    if (img.complete && img.naturalWidth > 0) apply();
    else {
      el.style.backgroundImage = "none";
      img.addEventListener("load", apply, { once: true });
      img.addEventListener("error", () => { if (el.dataset.cell === key) el.dataset.state = "error"; },
                           { once: true });
    }
  }

  const names = (ids) => ids === null ? null
    : (ids.length ? ids.map((c) => D.class_names[c]).join(", ") : "none");
  const value = (column, i) => D.columns[column].values[D.columns[column].codes[i]];
  function showCell(i) {
    $("info-title").textContent = D.cell_id[i];
    $("info-box").dataset.cellId = D.cell_id[i];
    setThumb($("thumb-rgby"), "rgby", i, 128);
    setThumb($("thumb-green"), "green", i, 128);
    const rows = [["cell", D.cell_id[i]], ["image", value("image", i)]];
    if (D.columns.cell_line) rows.push(["cell line", value("cell_line", i)]);
    const labelRows = [["true", "true labels"], ["image", "image labels"], ["prediction", "predicted"]];
    for (const [key, label] of labelRows) {
      const text = D.labels[key] ? names(D.labels[key][i]) : null;
      if (text !== null) rows.push([label, text]);
    }
    if (mode.key === "correct") rows.push(["correctness", mode.categories[mode.codes[i]]]);
    const dl = $("details");
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v; dl.append(dt, dd);
    }
  }
  function clearCell() {
    $("info-title").textContent = "hover a cell";
    delete $("info-box").dataset.cellId;
    $("details").replaceChildren();
    for (const id of ["thumb-rgby", "thumb-green"]) {
      const el = $(id); el.style.backgroundImage = "none"; el.dataset.cell = ""; el.dataset.state = "empty";
    }
  }

  function neighboursOf(i) {
    const out = [];
    for (let t = i * K; t < (i + 1) * K; t++) if (D.neighbours[t] >= 0) out.push(D.neighbours[t]);
    return out;
  }

  let hovered = -1, selected = -1;
  function setHover(i) {
    if (i === hovered) return;
    hovered = i;
    if (i >= 0) showCell(i); else if (selected >= 0) showCell(selected); else clearCell();
    requestOverlay();
  }

  function select(i) {
    selected = i;
    const box = $("neighbours");
    box.replaceChildren();
    if (i < 0) { $("nbr-title").textContent = "nearest neighbours"; requestOverlay(); return; }
    showCell(i);
    if (!K) { $("nbr-title").textContent = "no neighbours were given"; requestOverlay(); return; }
    $("nbr-title").textContent = K + " nearest neighbours of " + D.cell_id[i];
    for (const j of neighboursOf(i)) {
      const tile = document.createElement("button");
      tile.type = "button"; tile.className = "nbr"; tile.title = D.cell_id[j];
      tile.dataset.cellId = D.cell_id[j];
      const thumb = document.createElement("div"); thumb.className = "thumb";
      const caption = document.createElement("span"); caption.className = "nbr-id";
      caption.textContent = D.cell_id[j];
      tile.append(thumb, caption); box.append(tile);
      setThumb(thumb, "rgby", j, 64);
      tile.addEventListener("mouseenter", () => showCell(j));
      tile.addEventListener("mouseleave", () => showCell(selected));
      tile.addEventListener("click", () => select(j));
    }
    requestOverlay();
  }

  // ------------------------------------------------------------------ legend and selector
  const LEGEND_MAX = 40;
  function buildLegend() {
    const ul = $("legend");
    ul.replaceChildren();
    const shown = mode.order.slice(0, LEGEND_MAX), rest = mode.order.slice(LEGEND_MAX);
    const entry = (cats, colour, name, count) => {
      const li = document.createElement("li"), b = document.createElement("button");
      b.type = "button";
      const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = colour;
      const nm = document.createElement("span"); nm.className = "name"; nm.textContent = name;
      const n = document.createElement("span"); n.className = "n"; n.textContent = count.toLocaleString("en");
      b.append(sw, nm, n);
      const sync = () => { const off = cats.every((c) => mode.hidden[c]); b.classList.toggle("off", off);
                           b.setAttribute("aria-pressed", String(!off)); };
      b.addEventListener("click", () => {
        const hide = !cats.every((c) => mode.hidden[c]);
        for (const c of cats) mode.hidden[c] = hide ? 1 : 0;
        sync(); afterVisibility();
      });
      sync(); li.dataset.category = name; li.append(b); ul.append(li);
    };
    for (const c of shown) entry([c], mode.colours[c], mode.categories[c], mode.counts[c]);
    if (rest.length) {
      let total = 0; for (const c of rest) total += mode.counts[c];
      entry(rest, "#444a55", rest.length + " more", total);
    }
  }
  function afterVisibility() {
    updateColours();
    if (hovered >= 0 && !visible(hovered)) setHover(-1);
  }
  const selector = $("colour-by");
  for (const m of modes) {
    const o = document.createElement("option"); o.value = m.key; o.textContent = m.label; selector.append(o);
  }
  function setMode(key) {
    mode = modes.find((m) => m.key === key) || modes[0];
    selector.value = mode.key;
    buildLegend(); afterVisibility();
    if (hovered >= 0) showCell(hovered); else if (selected >= 0) showCell(selected);
  }
  selector.addEventListener("change", () => setMode(selector.value));
  const setAll = (hide) => { mode.hidden.fill(hide ? 1 : 0); buildLegend(); afterVisibility(); };
  $("show-all").addEventListener("click", () => setAll(false));
  $("hide-all").addEventListener("click", () => setAll(true));

  // ------------------------------------------------------------------ find by id
  let idIndex = null;
  function indexOf(id) {
    if (!idIndex) { idIndex = new Map(); for (let i = 0; i < N; i++) idIndex.set(D.cell_id[i], i); }
    const hit = idIndex.get(id);
    return hit === undefined ? -1 : hit;
  }
  $("find").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("find-input").value.trim();
    let i = indexOf(query);
    if (i < 0 && query) i = D.cell_id.findIndex((id) => id.startsWith(query));
    const status = $("find-status");
    if (i < 0) { status.textContent = "no cell with id " + JSON.stringify(query); return; }
    status.textContent = "";
    if (!visible(i)) { mode.hidden[mode.codes[i]] = 0; buildLegend(); afterVisibility(); }
    cx = X[i]; cy = Y[i]; zoom = Math.max(zoom, 4);
    select(i); requestDraw();
  });

  // ------------------------------------------------------------------ mouse
  let drag = null;
  const local = (e) => {
    const r = plot.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  };
  // the canvas takes the mouse (the overlay lets it through; the legend keeps its own)
  glCanvas.addEventListener("mousedown", (e) => {
    const [x, y] = local(e);
    drag = { x, y, cx, cy, moved: false };
  });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved) { const [x, y] = local(e); select(pick(x, y)); }
    drag = null;
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const [x, y] = local(e);
    if (drag.moved || Math.abs(x - drag.x) + Math.abs(y - drag.y) > 3) {
      drag.moved = true;
      cx = drag.cx - (x - drag.x) / scale(); cy = drag.cy + (y - drag.y) / scale();
      requestDraw();
    }
  });
  glCanvas.addEventListener("mousemove", (e) => {
    if (drag) return;
    const [x, y] = local(e);
    setHover(pick(x, y));
  });
  glCanvas.addEventListener("mouseleave", () => setHover(-1));
  glCanvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = local(e), s = scale();
    const wx = cx + (x - OX) / s, wy = cy - (y - H / 2) / s;
    zoom = Math.max(0.5, Math.min(500, zoom * Math.exp(-e.deltaY * 0.0015)));
    const s2 = scale(); cx = wx - (x - OX) / s2; cy = wy + (y - H / 2) / s2;
    requestDraw();
  }, { passive: false });
  $("reset-view").addEventListener("click", () => { cx = 0.5; cy = 0.5; zoom = 1; requestDraw(); });

  // ------------------------------------------------------------------ start
  new ResizeObserver(resize).observe(plot);
  resize();
  setMode(modes[0].key);
  clearCell();

  /** For tests and benchmarks: positions, lookups and timings, no hidden state changed. */
  window.cellMap = {
    count: N,
    indexOf: indexOf,
    screenPosition: (id) => {
      const i = typeof id === "number" ? id : indexOf(id);
      if (i < 0) return null;
      const r = plot.getBoundingClientRect(), [x, y] = toScreen(i);
      return { x: r.left + x, y: r.top + y };
    },
    hovered: () => hovered,
    selected: () => selected,
    setColourBy: setMode,
    webgl: !!gl,
    drawMs: (n) => {  // reading a pixel back waits until the frame is really drawn
      const pixel = new Uint8Array(4), t0 = performance.now();
      for (let k = 0; k < n; k++) {
        drawPoints();
        if (gl) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
      }
      return (performance.now() - t0) / n;
    },
    pickUs: (n) => {
      const t0 = performance.now();
      let hits = 0;
      for (let k = 0; k < n; k++) if (pick(Math.random() * W, Math.random() * H) >= 0) hits++;
      return { us: (performance.now() - t0) * 1000 / n, hits: hits };
    },
  };
  document.body.dataset.ready = "1";
})();
