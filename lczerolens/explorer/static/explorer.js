// lczerolens explorer: draws what Python computed (lczerolens/explorer/session.py). One module, three hosts:
// the anywidget widget (default export's render), the `lczerolens serve` page and the `lczerolens report` file
// (both call mount). A host is {meta, request(state) -> Promise<view>};
// state = {index, moves, target, lens, layer, channel, attention, query} ("" / null: off or the default).

const FILES = "abcdefgh";
const squareName = (sq) => FILES[sq % 8] + (Math.floor(sq / 8) + 1);
const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

function h(tag, attrs = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c);
  return el;
}

export function mount(el, host, options = {}) {
  const meta = host.meta;
  const state = {
    index: 0, moves: [], target: meta.target || "top", lens: meta.lens || "lrp",
    layer: "", channel: null, attention: "", query: null,
  };
  const layers = meta.layers || [];
  const attentionLayers = meta.attention_layers || [];
  let view = null;
  let selected = null;
  let pending = 0;
  const pieceUrl = {};
  for (const [p, svg] of Object.entries(meta.pieces)) {
    pieceUrl[p] = 'url("data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svg) + '")';
  }

  const root = h("div", { class: "lzx", "data-lczerolens-explorer": "", "data-fen": "", "data-ply": "0", tabindex: "0" });
  const boardEl = h("div", { class: "lzx-board" });
  const squares = [];
  for (let row = 7; row >= 0; row--) {
    for (let file = 0; file < 8; file++) {
      const sq = row * 8 + file;
      const cell = h("div", { class: "lzx-square", "data-square": squareName(sq), "data-value": "0" });
      cell.append(h("span", { class: "lzx-piece" }), h("span", { class: "lzx-val" }));
      if (file === 0) cell.append(h("span", { class: "lzx-rank", text: String(row + 1) }));
      if (row === 0) cell.append(h("span", { class: "lzx-file", text: FILES[file] }));
      cell.addEventListener("click", () => clickSquare(sq));
      squares[sq] = cell;
      boardEl.append(cell);
    }
  }
  const legendBar = h("div", { class: "lzx-legend-bar" });
  const legendMax = h("div", { class: "lzx-legend-max" });
  const legendMin = h("div", { class: "lzx-legend-min" });
  const legend = h("div", { class: "lzx-legend" }, [legendMax, legendBar, legendMin]);

  const targetSel = h("select", { name: "target", onchange: (e) => update({ target: e.target.value }) });
  const lensSel = h("select", { name: "lens", onchange: (e) => update({ lens: e.target.value }) });
  for (const name of meta.lenses) lensSel.append(h("option", { value: name, text: name }));
  const prev = h("button", { type: "button", "data-action": "prev", text: "◀", title: "previous ply (←)", onclick: () => step(-1) });
  const next = h("button", { type: "button", "data-action": "next", text: "▶", title: "next ply (→)", onclick: () => step(1) });
  const plyLabel = h("span", { class: "lzx-ply" });
  const controls = h("div", { class: "lzx-controls" }, [
    prev, plyLabel, next,
    h("label", {}, ["target ", targetSel]),
    h("label", {}, ["lens ", lensSel]),
  ]);
  // The layer view (latent relevance of a block, CRP of its channels) and the attention view (per-head maps).
  const layerSel = h("select", { name: "layer", onchange: (e) => update({ layer: e.target.value, channel: null }) });
  layerSel.append(h("option", { value: "", text: "off" }));
  for (const name of layers) layerSel.append(h("option", { value: name, text: name }));
  const channelSel = h("select", { name: "channel", onchange: (e) => update({ channel: e.target.value === "" ? null : Number(e.target.value) }) });
  const attentionSel = h("select", { name: "attention", onchange: (e) => update({ attention: e.target.value }) });
  attentionSel.append(h("option", { value: "", text: "off" }));
  for (const name of attentionLayers) attentionSel.append(h("option", { value: name, text: name }));
  const querySel = h("select", { name: "query", onchange: (e) => update({ query: e.target.value || null }) });
  querySel.append(h("option", { value: "", text: "top move's square" }));
  for (let row = 7; row >= 0; row--) for (let file = 0; file < 8; file++) querySel.append(h("option", { value: squareName(row * 8 + file), text: squareName(row * 8 + file) }));
  const extraControls = h("div", { class: "lzx-controls" });
  const channelLabel = h("label", { hidden: "" }, ["channel ", channelSel]);
  if (layers.length) extraControls.append(h("label", {}, ["layer ", layerSel]), channelLabel);
  if (attentionLayers.length) extraControls.append(h("label", {}, ["attention ", attentionSel]), h("label", {}, ["query ", querySel]));
  if (!extraControls.children.length) extraControls.hidden = true; // a report without layers: no empty row
  const layerPanel = h("div", { class: "lzx-panel lzx-layer", hidden: "" });
  const attentionPanel = h("div", { class: "lzx-panel lzx-attention", hidden: "" });

  const targetLine = h("div", { class: "lzx-target" });
  const targetValue = h("span", { "data-target-value": "" });
  const consLine = h("div", { class: "lzx-conservation" });
  const evalBox = h("div", { class: "lzx-eval" });
  const movesBox = h("div", { class: "lzx-moves" });
  const chart = h("div", { class: "lzx-chart" });
  const status = h("div", { class: "lzx-status" });
  const side = h("div", { class: "lzx-side" }, [
    h("div", { class: "lzx-title", text: meta.title }), controls, extraControls, targetLine, consLine, evalBox, movesBox, status,
  ]);
  root.append(h("div", { class: "lzx-main" }, [h("div", { class: "lzx-left" }, [h("div", { class: "lzx-boardwrap" }, [boardEl, legend]), chart]), side]), layerPanel, attentionPanel);
  el.append(root);

  function ply() { return state.index + state.moves.length; }

  async function update(change) {
    Object.assign(state, change);
    const ask = {
      index: state.index, moves: state.moves.slice(), target: state.target, lens: state.lens,
      layer: state.layer, channel: state.channel, attention: state.attention, query: state.query,
    };
    const ticket = ++pending;
    status.textContent = "computing…";
    root.setAttribute("data-busy", "");
    let answer;
    try {
      answer = await host.request(ask);
    } catch (err) {
      answer = { error: String(err && err.message ? err.message : err) };
    }
    if (ticket !== pending) return; // a newer request is on its way
    root.removeAttribute("data-busy");
    if (answer.error) {
      status.textContent = answer.error;
      status.classList.add("lzx-error");
      if (view) {
        state.target = view.target.name; state.lens = view.lens; targetSel.value = state.target; lensSel.value = state.lens;
        state.layer = view.layer ? view.layer.layer : ""; layerSel.value = state.layer;
        state.attention = view.attention ? view.attention.layer : ""; attentionSel.value = state.attention;
        // A refused channel or query does not stick: the next request asks for the defaults.
        if (state.channel !== null && !(view.layer && view.layer.channel === state.channel)) state.channel = null;
        if (state.query !== null && !(view.attention && view.attention.query === state.query)) state.query = null;
      }
      return;
    }
    status.textContent = "";
    status.classList.remove("lzx-error");
    view = answer;
    draw();
  }

  function step(delta) {
    if (delta > 0) {
      if (state.index + 1 < meta.count && state.moves.length === 0) update({ index: state.index + 1 });
    } else if (state.moves.length > 0) {
      update({ moves: state.moves.slice(0, -1) });
    } else if (state.index > 0) {
      update({ index: state.index - 1 });
    }
  }

  function play(uci) {
    // Along the source's own line, a played move that is the game's next move steps there.
    if (state.moves.length === 0 && state.index + 1 < meta.count && meta.line[state.index] && meta.line[state.index].uci === uci) {
      update({ index: state.index + 1 });
    } else {
      update({ moves: state.moves.concat([uci]), target: HEADS.has(state.target) ? state.target : "top" });
    }
  }
  const HEADS = new Set(meta.targets);

  function clickSquare(sq) {
    if (!view) return;
    const name = squareName(sq);
    if (selected !== null) {
      const from = squareName(selected);
      const cands = view.legal.map((m) => m.uci).filter((u) => u.slice(0, 2) === from && u.slice(2, 4) === name);
      selected = null;
      if (cands.length) {
        play(cands.find((u) => u.length === 4 || u[4] === "q") || cands[0]); // promotion: a queen by default
        return;
      }
    }
    if (view.legal.some((m) => m.uci.slice(0, 2) === name)) selected = sq;
    drawSelection();
  }

  function drawSelection() {
    for (let sq = 0; sq < 64; sq++) squares[sq].classList.toggle("lzx-selected", sq === selected);
    const from = selected === null ? null : squareName(selected);
    for (let sq = 0; sq < 64; sq++) {
      const to = squareName(sq);
      squares[sq].classList.toggle("lzx-dest", from !== null && view.legal.some((m) => m.uci.slice(0, 2) === from && m.uci.slice(2, 4) === to));
    }
  }

  function pieceAt(fen) {
    const out = {};
    const rows = fen.split(" ")[0].split("/");
    rows.forEach((row, i) => {
      let file = 0;
      for (const ch of row) {
        if (/\d/.test(ch)) file += Number(ch);
        else { out[(7 - i) * 8 + file] = ch; file += 1; }
      }
    });
    return out;
  }

  function draw() {
    const v = view;
    root.setAttribute("data-fen", v.fen);
    root.setAttribute("data-ply", String(v.ply));
    const pieces = pieceAt(v.fen);
    const target = v.target.move;
    for (let sq = 0; sq < 64; sq++) {
      const cell = squares[sq];
      cell.setAttribute("data-value", String(v.values[sq]));
      cell.style.backgroundColor = v.colors[sq];
      cell.title = `${squareName(sq)}: ${v.values[sq]}`;
      const p = pieces[sq];
      cell.querySelector(".lzx-piece").style.backgroundImage = p ? pieceUrl[p] : "none";
      const name = squareName(sq);
      cell.classList.toggle("lzx-last", !!v.lastmove && (v.lastmove.slice(0, 2) === name || v.lastmove.slice(2, 4) === name));
      cell.classList.toggle("lzx-from", !!target && target.slice(0, 2) === name);
      cell.classList.toggle("lzx-to", !!target && target.slice(2, 4) === name);
    }
    selected = null;
    drawSelection();
    legendBar.style.background = `linear-gradient(to top, ${v.stops.join(", ")})`;
    legendMax.textContent = fmt(v.vmax, 3);
    legendMin.textContent = fmt(v.vmin, 3);

    targetSel.replaceChildren();
    for (const t of meta.targets) targetSel.append(h("option", { value: t, text: t }));
    const group = h("optgroup", { label: "moves" });
    for (const m of v.legal) group.append(h("option", { value: m.uci, text: `${m.san} (${m.uci})` }));
    targetSel.append(group);
    targetSel.value = v.target.name;
    lensSel.value = v.lens;
    state.target = v.target.name;
    state.lens = v.lens;

    plyLabel.textContent = `ply ${v.ply}`;
    prev.disabled = v.ply === 0;
    next.disabled = !(state.moves.length === 0 && state.index + 1 < meta.count);
    targetLine.replaceChildren(`${v.method} of ${v.target.label} = `, targetValue);
    targetValue.textContent = fmt(v.target.value, 4);
    targetValue.setAttribute("data-target-value", String(v.target.value));
    consLine.textContent = v.conservation === null ? "the map's sum / explained value: –"
      : `the map sums to ${(100 * v.conservation).toFixed(1)}% of the explained value`;

    const e = v.evaluation;
    const kids = [h("div", { class: "lzx-evalline", text: `value ${e.value >= 0 ? "+" : ""}${fmt(e.value)}` + (e.mlh === null ? "" : ` · moves left ${fmt(e.mlh, 1)}`) })];
    if (e.wdl) {
      const bar = h("div", { class: "lzx-wdl", title: `win ${fmt(e.wdl[0])} draw ${fmt(e.wdl[1])} loss ${fmt(e.wdl[2])}` });
      ["win", "draw", "loss"].forEach((k, i) => bar.append(h("span", { class: `lzx-${k}`, style: `flex-grow:${e.wdl[i]}`, text: e.wdl[i] > 0.12 ? `${k[0].toUpperCase()} ${(100 * e.wdl[i]).toFixed(0)}%` : "" })));
      kids.push(bar);
    }
    const top = h("ol", { class: "lzx-top" });
    for (const m of e.top) {
      top.append(h("li", { "data-move": m.uci, title: "explain this move", onclick: () => update({ target: m.uci }) },
        [h("span", { class: "lzx-bar", style: `width:${(100 * m.p).toFixed(1)}%` }), `${m.san} ${(100 * m.p).toFixed(1)}%`]));
    }
    kids.push(top);
    evalBox.replaceChildren(...kids);
    drawMoves();
    drawChart();
    drawLayer();
    drawAttention();
  }

  // A small board for one map: 64 [data-cell] with data-value, the pieces, a caption and the scale.
  function miniBoard(name, map, caption, opts = {}) {
    const pieces = pieceAt(view.fen);
    const grid = h("div", { class: "lzx-mini-board" });
    for (let row = 7; row >= 0; row--) {
      for (let file = 0; file < 8; file++) {
        const sq = row * 8 + file;
        const cell = h("div", { class: "lzx-cell", "data-cell": squareName(sq), "data-value": String(map.values[sq]), title: `${squareName(sq)}: ${map.values[sq]}` });
        cell.style.backgroundColor = map.colors[sq];
        if (pieces[sq]) cell.style.backgroundImage = pieceUrl[pieces[sq]];
        if (opts.mark === squareName(sq)) cell.classList.add("lzx-query");
        if (opts.onclick) cell.addEventListener("click", () => opts.onclick(squareName(sq)));
        grid.append(cell);
      }
    }
    const scale = h("div", { class: "lzx-mini-scale" }, [
      h("span", { text: fmt(map.vmin, 3) }),
      h("span", { class: "lzx-mini-bar", style: `background: linear-gradient(to right, ${map.stops.join(", ")})` }),
      h("span", { text: fmt(map.vmax, 3) }),
    ]);
    return h("figure", { class: "lzx-mini", "data-map": name, "data-sum": String(map.sum) }, [grid, scale, h("figcaption", { text: caption })]);
  }

  function drawLayer() {
    const L = view.layer;
    channelLabel.hidden = !(state.layer && L && !L.error);
    if (!state.layer || !L) { layerPanel.hidden = true; layerPanel.replaceChildren(); channelSel.replaceChildren(); return; }
    layerPanel.hidden = false;
    if (L.error) {
      layerPanel.replaceChildren(h("div", { class: "lzx-panel-title", text: `layer ${L.layer}` }), h("div", { class: "lzx-error", text: L.error }));
      channelSel.replaceChildren();
      return;
    }
    channelSel.replaceChildren(h("option", { value: "", text: "top channel" }));
    const listed = new Set();
    for (const c of L.channels) { channelSel.append(h("option", { value: String(c.channel), text: `${c.channel} (${fmt(c.relevance, 3)})` })); listed.add(c.channel); }
    if (!listed.has(L.channel)) channelSel.append(h("option", { value: String(L.channel), text: String(L.channel) }));
    channelSel.value = state.channel === null || state.channel !== L.channel ? "" : String(state.channel);
    const top = Math.max(...L.channels.map((c) => Math.abs(c.relevance)), 1e-12);
    const list = h("ol", { class: "lzx-channels" });
    for (const c of L.channels) {
      list.append(h("li", { "data-channel": String(c.channel), class: c.channel === L.channel ? "lzx-current-channel" : null, title: "show this channel's CRP map", onclick: () => update({ channel: c.channel }) },
        [h("span", { class: "lzx-bar", style: `width:${(100 * Math.abs(c.relevance) / top).toFixed(1)}%` }), `channel ${c.channel}: ${fmt(c.relevance, 3)}`]));
    }
    layerPanel.replaceChildren(
      h("div", { class: "lzx-panel-title", text: `layer ${L.layer}: relevance of its output, and of one channel (CRP)` }),
      h("div", { class: "lzx-minis" }, [
        miniBoard("latent", L.latent, `latent relevance, summed over ${L.count} channels (sum ${fmt(L.latent.sum, 3)})`),
        miniBoard("crp", L.crp, `input relevance through channel ${L.channel} (sum ${fmt(L.crp.sum, 3)})`),
        h("div", { class: "lzx-channel-box" }, [h("div", { text: `top channels by relevance (of ${L.count})` }), list]),
      ]),
    );
  }

  function drawAttention() {
    const A = view.attention;
    if (!state.attention || !A) { attentionPanel.hidden = true; attentionPanel.replaceChildren(); return; }
    attentionPanel.hidden = false;
    querySel.value = state.query || "";
    const minis = A.heads.map((head, i) => miniBoard(`head-${i}`, head, `head ${i}`, { mark: A.query, onclick: (sq) => update({ query: sq }) }));
    attentionPanel.replaceChildren(
      h("div", { class: "lzx-panel-title", "data-query": A.query, text: `attention of ${A.layer} from ${A.query} (framed), per head: click a square to query it` }),
      h("div", { class: "lzx-minis" }, minis),
    );
  }

  function drawMoves() {
    const list = h("div", { class: "lzx-movelist" });
    meta.line.forEach((m, i) => {
      if (!m.uci) return;
      const b = h("span", { class: "lzx-move", "data-ply": String(i + 1), text: m.san, onclick: () => update({ index: i + 1, moves: [] }) });
      if (state.moves.length === 0 && state.index === i + 1) b.classList.add("lzx-current");
      if (i % 2 === 0 && meta.fens[0].split(" ")[1] === "w") list.append(h("span", { class: "lzx-num", text: `${Math.floor(i / 2) + 1}.` }));
      list.append(b);
    });
    if (state.moves.length) {
      const variation = h("div", { class: "lzx-variation" }, [`from ply ${state.index}: `]);
      state.moves.forEach((u, k) => variation.append(h("span", { class: "lzx-move" + (k === state.moves.length - 1 ? " lzx-current" : ""), text: u, onclick: () => update({ moves: state.moves.slice(0, k + 1) }) })));
      list.append(variation);
    }
    movesBox.replaceChildren(list);
    const current = list.querySelector(".lzx-current");
    if (current && current.scrollIntoView && options.scroll !== false) current.scrollIntoView({ block: "nearest" });
  }

  function drawChart() {
    const values = meta.values;
    if (!values || values.length < 2) { chart.replaceChildren(); return; }
    const W = 360, H = 70, n = values.length;
    const x = (i) => 4 + (i * (W - 8)) / (n - 1);
    const y = (v) => H / 2 - (v * (H / 2 - 4));
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("class", "lzx-chart-svg");
    // The value is for the side to move; the chart shows it for white.
    const white = values.map((v, i) => (meta.fens[i].split(" ")[1] === "w" ? v : -v));
    const pts = white.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.innerHTML = `<rect x="0" y="0" width="${W}" height="${H}" fill="#fafafa"/><line x1="0" x2="${W}" y1="${H / 2}" y2="${H / 2}" stroke="#bbb"/>` +
      `<polyline points="${pts}" fill="none" stroke="#333" stroke-width="1.5"/>` +
      `<line x1="${x(state.index)}" x2="${x(state.index)}" y1="0" y2="${H}" stroke="#c00"/>`;
    svg.addEventListener("click", (ev) => {
      const r = svg.getBoundingClientRect();
      const i = Math.round(((ev.clientX - r.left) / r.width * W - 4) / ((W - 8) / (n - 1)));
      update({ index: Math.min(Math.max(i, 0), n - 1), moves: [] });
    });
    chart.replaceChildren(h("div", { class: "lzx-chart-title", text: "value for white per ply (click to go there)" }), svg);
  }

  const keyTarget = options.keys === "root" ? root : document;
  keyTarget.addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
    ev.preventDefault();
    step(ev.key === "ArrowRight" ? 1 : -1);
  }, true);

  update({});
  return { root, state, update, step };
}

// anywidget: Python holds the session; the front end sets `request`, Python answers in `view`.
function render({ model, el }) {
  const waiting = new Map();
  let counter = 0;
  model.on("change:view", () => {
    const v = model.get("view");
    const resolve = waiting.get(v.request_id);
    if (resolve) { waiting.delete(v.request_id); resolve(v); }
  });
  const host = {
    meta: model.get("meta"),
    request(state) {
      const id = `${Date.now()}-${++counter}`;
      return new Promise((resolve) => {
        waiting.set(id, resolve);
        model.set("request", { ...state, request_id: id });
        model.save_changes();
      });
    },
  };
  const app = mount(el, host, { keys: "root" });
  const first = model.get("view");
  return () => { waiting.clear(); app.root.remove(); void first; };
}

export default { render };
