// The search page of `vmae-fast serve`: queries the JSON API of the same server and shows the matches as cards,
// each playing exactly its segment of the video (/media, Range requests; #t=start,end plus a pause at the end).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { levels: {}, clips: [], file: null };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: the status says it */ }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

const post = (path, body) => api(path, {
  method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
});

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const k = () => Math.max(1, Math.min(1000, parseInt($("k").value, 10) || 12));
const level = () => $("level").value;
const span = (m) => (m.start_s == null || m.end_s == null) ? "time unknown"
  : `${m.start_s.toFixed(2)}–${m.end_s.toFixed(2)} s`;

// --- the index ---------------------------------------------------------------------------------------------------
async function loadStats() {
  const stats = await api("/api/stats");
  state.levels = stats.levels;
  const parts = Object.entries(stats.levels).map(([name, s]) => {
    const unit = name === "clip" ? "clips" : "videos";
    const recall = s.kind === "flat" && !s.queries ? "exact search"
      : `recall@10 <b>${s.recall_at_10.toFixed(3)}</b> measured on ${s.queries} held-out queries`;
    const latency = s.latency_ms_p50 != null ? `, ${s.latency_ms_p50.toFixed(2)} ms a query (p50)` : "";
    return `<span class="level" data-level="${name}" data-recall="${s.recall_at_10}">${name} index: ${s.kind}, ` +
      `${s.rows.toLocaleString("en")} ${unit}, ${recall}${latency}</span>`;
  });
  $("stats").innerHTML = parts.join(" · ");
  if (!stats.levels.video) $("level").querySelector('option[value="video"]').disabled = true;
}

// --- a video of the collection: autocomplete, its clips ------------------------------------------------------------
let suggestTimer = null;
let suggestSeq = 0;
function suggest() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    const seq = ++suggestSeq;
    const ids = await api(`/api/videos?q=${encodeURIComponent($("video-id").value)}&limit=20`);
    if (seq !== suggestSeq) return;  // a newer keystroke answered already
    $("video-ids").replaceChildren(...ids.map((id) => Object.assign(document.createElement("option"), { value: id })));
    if (ids.includes($("video-id").value)) loadClips();
  }, 120);
}

async function loadClips(select = null) {
  const videoId = $("video-id").value;
  if (videoId === state.clipsOf) { if (select != null) $("clip").value = select; return; }
  let clips;
  try { clips = await api(`/api/clips?video_id=${encodeURIComponent(videoId)}`); } catch (e) { return; }
  state.clipsOf = videoId;
  const options = [];
  if (state.levels.video) options.push(Object.assign(document.createElement("option"), {
    value: "video", textContent: "the whole video" }));
  for (const c of clips) options.push(Object.assign(document.createElement("option"), {
    value: String(c.clip_index), textContent: `clip ${c.clip_index} (${span(c)})` }));
  $("clip").replaceChildren(...options);
  if (select != null) $("clip").value = select;
}

// --- searching and showing the matches ----------------------------------------------------------------------------
async function search(kind, request) {
  status("searching…");
  try {
    const result = kind === "upload" ? await request() : await post(`/api/search/${kind}`, request);
    show(result);
    status(`${result.matches.length} matches in ${result.took_ms.toFixed(1)} ms`);
  } catch (e) {
    status(e.message, true);
  }
}

function describe(q) {
  if (q.type === "clip") return `clip ${q.clip_index} of ${q.video_id} (${span(q)})`;
  if (q.type === "video") return `video ${q.video_id}`;
  if (q.type === "upload") return `the uploaded video at ${q.at_s} s (its clip ${q.clip_index}, ${span(q)})`;
  return "a vector";
}

function show(result) {
  const query = $("query");
  query.hidden = false;
  query.textContent = `${result.level === "clip" ? "clips" : "videos"} like ${describe(result.query)}`;
  query.dataset.type = result.query.type;
  query.dataset.videoId = result.query.video_id || "";
  query.dataset.clipIndex = result.query.clip_index != null ? String(result.query.clip_index) : "";
  $("results").replaceChildren(...result.matches.map((m, i) => card(m, i + 1, result.query)));
}

function card(m, rank, q) {
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.videoId = m.video_id || "";
  el.dataset.row = String(m.row);
  if (m.clip_index != null) el.dataset.clipIndex = String(m.clip_index);
  if (m.start_s != null) el.dataset.start = m.start_s.toFixed(3);
  if (m.end_s != null) el.dataset.end = m.end_s.toFixed(3);
  if (q.video_id === m.video_id && (q.clip_index == null || q.clip_index === m.clip_index)) el.classList.add("self");
  const head = document.createElement("div");
  head.className = "head";
  head.append(text("span", "rank", `#${rank}`), text("span", "score", m.score.toFixed(3)));
  const more = text("button", "more", "more like this");
  more.type = "button";
  head.append(more);
  el.append(head, text("div", "video-id", m.video_id || `row ${m.row}`),
    text("div", "time", span(m) + (m.num_clips != null ? ` · ${m.num_clips} clips` : "")));
  if (m.media) el.append(segmentPlayer(m));
  else el.append(text("div", "missing", "the video is not available on this server"));
  el.addEventListener("click", (event) => {
    if (event.target.closest("video")) return;  // its controls are for playing
    moreLikeThis(m);
  });
  return el;
}

function text(tag, className, content) {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = content;
  return el;
}

// A <video> that plays [start_s, end_s) of its file: the media fragment seeks there and stops at the end, and the
// handlers keep it inside the segment when the user plays again.
function segmentPlayer(m) {
  const video = document.createElement("video");
  video.controls = true;
  video.muted = true;
  video.preload = "metadata";
  video.playsInline = true;
  const start = m.start_s ?? 0;
  const end = m.end_s;
  video.src = m.media + (m.start_s != null ? `#t=${start.toFixed(3)}` + (end != null ? `,${end.toFixed(3)}` : "") : "");
  video.addEventListener("play", () => {
    if (video.currentTime < start - 0.05 || (end != null && video.currentTime >= end - 0.02)) video.currentTime = start;
  });
  video.addEventListener("timeupdate", () => {
    if (end != null && video.currentTime >= end && !video.paused) video.pause();
  });
  video.addEventListener("error", () => video.replaceWith(text("div", "missing", "this video cannot be played here")));
  return video;
}

function moreLikeThis(m) {
  $("video-id").value = m.video_id;
  if (m.clip_index != null) {
    loadClips(String(m.clip_index));
    search("clip", { video_id: m.video_id, clip_index: m.clip_index, k: k(), level: level() });
  } else {
    loadClips("video");
    search("video", { video_id: m.video_id, k: k(), level: level() });
  }
}

// --- an uploaded video at a time ---------------------------------------------------------------------------------
function useFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("upload-search").disabled = false;
  $("drop").firstChild.textContent = `${file.name} (${(file.size / 1e6).toFixed(1)} MB) — drop another or choose `;
}

function setup() {
  $("video-id").addEventListener("input", suggest);
  $("video-id").addEventListener("change", () => loadClips());
  $("by-id").addEventListener("submit", async (event) => {
    event.preventDefault();
    const videoId = $("video-id").value;
    if (state.clipsOf !== videoId) await loadClips();
    const clip = $("clip").value;
    if (clip === "video") search("video", { video_id: videoId, k: k(), level: level() });
    else search("clip", { video_id: videoId, clip_index: parseInt(clip || "0", 10), k: k(), level: level() });
  });
  $("file").addEventListener("change", () => useFile($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    useFile(event.dataTransfer.files[0]);
  });
  const preview = $("preview");
  for (const name of ["timeupdate", "seeked"]) {
    preview.addEventListener(name, () => { $("at").value = preview.currentTime.toFixed(2); });
  }
  $("at").addEventListener("change", () => { if (!preview.hidden) preview.currentTime = parseFloat($("at").value) || 0; });
  $("by-upload").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.file) return;
    const at = Math.max(0, parseFloat($("at").value) || 0);
    search("upload", () => api(`/api/search/upload?at_s=${at}&k=${k()}&level=${level()}`, {
      method: "POST", headers: { "content-type": "application/octet-stream" }, body: state.file,
    }));
  });
  loadStats().catch((e) => status(`cannot read the index: ${e.message}`, true));
}

setup();
