// The swarm monitor: redraws from /api/status/stream (server-sent events) and streams
// chat answers from /v1/chat/completions. Everything it loads comes from this node.
"use strict";

const state = { served: null, name: null, history: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const short = (peer) => peer.slice(0, 6) + "…" + peer.slice(-6);
const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function drawModel(model) {
  const servers = [...model.server_list].sort((a, b) => a.layers[0] - b.layers[0]);
  const section = el("div", { class: "model", "data-model": model.model_id });
  const coverage = model.full_route ? "full" : "partial";
  section.append(el("h2", {}, model.name || model.model_id.slice(0, 16),
    el("span", { class: "coverage " + coverage, "data-coverage": coverage },
      model.full_route ? "full coverage" : "layers missing")));
  const table = el("table", { class: "servers" },
    el("tr", {}, ...["server", "layers", "tok/s per block", "state", "reachability", "version", "RTT ms"].map((h) => el("th", {}, h))));
  for (const s of servers) {
    table.append(el("tr", { class: "server", "data-peer": s.peer },
      el("td", { title: s.peer }, short(s.peer)),
      el("td", {}, s.layers[0] + "–" + (s.layers[1] - 1)),
      el("td", { class: "num" }, fixed(s.throughput, 0)),
      el("td", {}, s.state),
      el("td", {}, s.reachability),
      el("td", {}, s.version),
      el("td", { class: "num" }, fixed(s.rtt_ms, 1))));
  }
  section.append(table);
  // Blocks × servers: a row per server, a column per block, and a row of counts.
  const map = el("table", {});
  const head = el("tr", {}, el("th", { class: "row" }, "block"));
  model.blocks.forEach((b) => head.append(el("th", {}, b.index % 5 === 0 ? b.index : "")));
  map.append(head);
  for (const s of servers) {
    const row = el("tr", {}, el("th", { class: "row" }, short(s.peer)));
    model.blocks.forEach((b) => {
      const held = b.index >= s.layers[0] && b.index < s.layers[1];
      row.append(el("td", { class: held ? "held " + s.state : "", title: held ? `block ${b.index}: ${fixed(s.throughput, 0)} tok/s` : "" }));
    });
    map.append(row);
  }
  const counts = el("tr", {}, el("th", { class: "row" }, "servers"));
  model.blocks.forEach((b) => counts.append(el("td", { class: b.servers.length ? "countn" : "count0" }, b.servers.length)));
  map.append(counts);
  section.append(el("div", { class: "map" }, map));
  return section;
}

function draw(status) {
  state.served = status.served;
  const served = status.models.find((m) => m.model_id === status.served);
  state.name = served ? served.model_id : null;
  document.getElementById("peers").textContent = `${status.peers} peer(s) connected · refresh ${status.refresh_ms / 1000} s`;
  const models = document.getElementById("models");
  models.replaceChildren(...status.models.map(drawModel));
  const live = document.getElementById("live");
  live.textContent = "live " + new Date().toLocaleTimeString();
  live.className = "badge ok";
}

function follow() {
  const source = new EventSource("/api/status/stream");
  source.addEventListener("status", (e) => draw(JSON.parse(e.data)));
  source.onerror = () => {
    const live = document.getElementById("live");
    live.textContent = "disconnected, retrying";
    live.className = "badge bad";
  };
}

async function chat(text) {
  const log = document.getElementById("chat-log");
  log.append(el("div", { class: "user" }, "you: " + text));
  const answer = el("div", { class: "assistant", "data-done": "false" }, "");
  log.append(answer);
  state.history.push({ role: "user", content: text });
  const send = document.getElementById("chat-send");
  send.disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: state.name, messages: state.history, stream: true, max_tokens: 64, temperature: 0 }),
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let full = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
          if (delta) {
            full += delta;
            answer.textContent = full;
          }
        }
      }
    }
    state.history.push({ role: "assistant", content: full });
  } catch (e) {
    answer.className = "assistant error";
    answer.textContent = "error: " + e.message;
    state.history.pop();
  } finally {
    answer.setAttribute("data-done", "true");
    send.disabled = false;
  }
}

document.getElementById("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("chat-input");
  const text = input.value.trim();
  input.value = "";
  if (text) chat(text);
});

follow();
