// tauri-sse: an htmx extension that gives Tauri events the semantics of htmx's SSE extension.
//
// The Rust side emits one Tauri event, `chat-stream`, whose payload is a stream frame:
//   { id, chat, message, event: "thinking"|"token"|"stats"|"complete"|"error", data, stats? }
// `id` grows by one per frame within a chat. On the page:
//   <article hx-ext="tauri-sse" sse-connect="CHAT_ID" sse-message="MSG_ID" sse-last-id="N">
//     <div sse-swap="thinking" sse-render="text"></div>      named events swapped into targets
//     <div sse-swap="token" sse-render="markdown"></div>
//     <span sse-swap="stats"></span>
//     <div hx-get="/messages/MSG_ID" hx-trigger="sse:complete" hx-swap="outerHTML" hx-target="closest article">
//   </article>
// On connect the extension listens first, then asks `GET /chats/CHAT_ID/events?after=N` for what it missed
// (a reload or a late attach), applies that and the live frames in id order, each exactly once, and fires
// `sse:NAME` on the connected element for every frame, so `hx-trigger="sse:complete"` works as with SSE.
(function () {
  "use strict";

  /** Chat id -> set of connected elements. One Tauri listener serves them all. */
  const connections = new Map();
  let listening = null;

  function tauriListen(handler) {
    const tauri = window.__TAURI__;
    if (!tauri || !tauri.event) {
      return Promise.reject(new Error("Tauri IPC is not available in this window"));
    }
    return tauri.event.listen("chat-stream", (e) => handler(e.payload));
  }

  function ensureListening() {
    if (!listening) {
      listening = tauriListen((frame) => {
        const set = connections.get(String(frame.chat));
        if (set) set.forEach((elt) => deliver(elt, frame));
      }).catch((err) => {
        listening = null;
        console.error("tauri-sse:", err);
      });
    }
    return listening;
  }

  function state(elt) {
    if (!elt._tauriSse) elt._tauriSse = { lastId: 0, ready: false, pending: [], text: new Map(), raf: 0 };
    return elt._tauriSse;
  }

  /** Applies one frame to a connected element unless it has seen that id already. */
  function deliver(elt, frame) {
    const st = state(elt);
    const only = elt.getAttribute("sse-message");
    if (only && frame.message != null && String(frame.message) !== only) return;
    if (!st.ready) {
      st.pending.push(frame);
      return;
    }
    if (frame.id <= st.lastId) return;
    st.lastId = frame.id;
    elt.setAttribute("sse-last-id", String(frame.id));
    swapInto(elt, frame);
    htmx.trigger(elt, "sse:" + frame.event, frame);
  }

  function targetsFor(elt, name) {
    const out = [];
    elt.querySelectorAll("[sse-swap]").forEach((t) => {
      const names = t.getAttribute("sse-swap").split(",").map((s) => s.trim());
      if (names.includes(name)) out.push(t);
    });
    return out;
  }

  function swapInto(elt, frame) {
    const st = state(elt);
    for (const target of targetsFor(elt, frame.event)) {
      const mode = target.getAttribute("sse-render") || "text";
      if (frame.event === "stats" || mode === "replace") {
        target.textContent = frame.data;
      } else {
        const prev = st.text.get(target) || "";
        st.text.set(target, prev + frame.data);
        if (mode === "markdown") scheduleMarkdown(elt, target);
        else target.append(document.createTextNode(frame.data));
      }
      target.closest("[data-reveal]")?.removeAttribute("hidden");
    }
    if (frame.event === "complete" || frame.event === "error") {
      elt.classList.remove("streaming");
      elt.classList.add(frame.event === "error" ? "failed" : "done");
    }
  }

  /** Markdown is re-rendered at most once per animation frame, however many tokens arrive. */
  function scheduleMarkdown(elt, target) {
    const st = state(elt);
    st.dirty = st.dirty || new Set();
    st.dirty.add(target);
    if (st.raf) return;
    st.raf = requestAnimationFrame(() => {
      st.raf = 0;
      st.dirty.forEach((t) => window.SmolUI.renderMarkdownInto(t, st.text.get(t) || ""));
      st.dirty.clear();
      keepScrolled(elt);
    });
  }

  function keepScrolled(elt) {
    const scroller = elt.closest("[data-scroll]");
    if (scroller && scroller.dataset.pinned !== "false") scroller.scrollTop = scroller.scrollHeight;
  }

  /** A page rendered mid-answer carries the text so far in `data-seed`; later frames extend it. */
  function seed(elt) {
    const st = state(elt);
    elt.querySelectorAll("[sse-swap][data-seed]").forEach((t) => {
      const text = t.getAttribute("data-seed");
      if (!text) return;
      st.text.set(t, text);
      if (t.getAttribute("sse-render") === "markdown") window.SmolUI.renderMarkdownInto(t, text);
      else t.textContent = text;
    });
  }

  async function connect(elt) {
    const chat = elt.getAttribute("sse-connect");
    const st = state(elt);
    seed(elt);
    st.lastId = parseInt(elt.getAttribute("sse-last-id") || "0", 10) || 0;
    if (!connections.has(chat)) connections.set(chat, new Set());
    connections.get(chat).add(elt);
    try {
      await ensureListening();
      const res = await fetch("/chats/" + encodeURIComponent(chat) + "/events?after=" + st.lastId);
      const missed = res.ok ? await res.json() : [];
      st.ready = true;
      const all = missed.concat(st.pending).sort((a, b) => a.id - b.id);
      st.pending = [];
      all.forEach((f) => deliver(elt, f));
    } catch (err) {
      st.ready = true;
      console.error("tauri-sse: resume failed", err);
      htmx.trigger(elt, "sse:error", { error: String(err) });
    }
  }

  function disconnect(elt) {
    const chat = elt.getAttribute("sse-connect");
    const set = connections.get(chat);
    if (set) {
      set.delete(elt);
      if (set.size === 0) connections.delete(chat);
    }
  }

  htmx.defineExtension("tauri-sse", {
    onEvent: function (name, evt) {
      const elt = evt.target || evt.detail.elt;
      if (name === "htmx:beforeCleanupElement" && elt && elt._tauriSse) {
        disconnect(elt);
      } else if (name === "htmx:afterProcessNode" && elt && elt.hasAttribute && elt.hasAttribute("sse-connect")) {
        if (!elt._tauriSse) connect(elt);
      }
      return true;
    },
  });
})();
