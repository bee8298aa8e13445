// smol-sse: an htmx extension with the semantics of htmx's SSE extension, over either transport:
// - in the desktop app, Tauri events: `chat-stream` frames, and `app-state` news;
// - in a browser, Server-Sent Events: `EventSource("/chats/CHAT/stream?after=N")` per connected element (named
//   events, `id:` per frame, the browser's own reconnect resumes with `Last-Event-ID`), and `/events` for news.
// A frame is { id, chat, message, event: "queued"|"thinking"|"token"|"tool"|"stats"|"complete"|"error", data };
// `id` grows by one per frame within a chat. `queued` (data: "Waiting for the model — 1 answer ahead", or "" once
// the answer is next) comes only while the answer waits for the engine behind others. On the page:
//   <article sse-connect="CHAT_ID" sse-message="MSG_ID" sse-last-id="N">
//     <div sse-swap="thinking" sse-render="text"></div>      named events swapped into targets
//     <div sse-swap="token" sse-render="markdown"><span sse-swap="queued" sse-render="replace"></span></div>
//     <span sse-swap="stats"></span>
//     <div hx-get="/messages/MSG_ID" hx-trigger="sse:complete" hx-swap="outerHTML" hx-target="closest article">
//   </article>
// Whatever the transport, frames go through one path (`deliver`): applied in id order, each exactly once, and
// `sse:NAME` fired on the connected element for every frame, so `hx-trigger="sse:complete"` works as with SSE.
(function () {
  "use strict";

  const EVENTS = ["queued", "thinking", "token", "tool", "stats", "complete", "error"];

  // --- transports -----------------------------------------------------------------------------------
  // Each has `attach(elt, chat, after, onFrame)`, which starts delivering the chat's frames after id `after`
  // (what was missed first) and returns a function that stops it, and `onAppState(handler)`.

  /** Desktop: one Tauri listener serves every connected element; missed frames come from the replay endpoint. */
  const tauriTransport = (function () {
    const byChat = new Map(); // chat id -> Set of frame handlers
    let listening = null;

    function listen() {
      if (!listening) {
        listening = window.__TAURI__.event
          .listen("chat-stream", (e) => {
            const handlers = byChat.get(String(e.payload.chat));
            if (handlers) handlers.forEach((h) => h(e.payload));
          })
          .catch((err) => {
            listening = null;
            throw err;
          });
      }
      return listening;
    }

    return {
      attach(elt, chat, after, onFrame) {
        // Frames that arrive while the missed ones are fetched wait, then all go in id order.
        let pending = [];
        const handler = (frame) => (pending ? pending.push(frame) : onFrame(frame));
        if (!byChat.has(chat)) byChat.set(chat, new Set());
        byChat.get(chat).add(handler);
        listen()
          .then(() => fetch("/chats/" + encodeURIComponent(chat) + "/events?after=" + after))
          .then((res) => (res.ok ? res.json() : []))
          .catch((err) => {
            console.error("smol-sse: resume failed", err);
            htmx.trigger(elt, "sse:error", { error: String(err) });
            return [];
          })
          .then((missed) => {
            const all = missed.concat(pending).sort((a, b) => a.id - b.id);
            pending = null;
            all.forEach(onFrame);
          });
        return () => {
          const set = byChat.get(chat);
          if (!set) return;
          set.delete(handler);
          if (set.size === 0) byChat.delete(chat);
        };
      },
      onAppState(handler) {
        window.__TAURI__.event
          .listen("app-state", (e) => handler(e.payload || {}))
          .then(() => resync(handler, false));
      },
    };
  })();

  /** Browser: the server replays what was missed, then streams; EventSource reconnects by itself. */
  const httpTransport = {
    attach(elt, chat, after, onFrame) {
      const source = new EventSource("/chats/" + encodeURIComponent(chat) + "/stream?after=" + after);
      const onEvent = (e) => onFrame(JSON.parse(e.data));
      EVENTS.forEach((name) => source.addEventListener(name, onEvent));
      source.onerror = () => {
        // CLOSED means the server refused (e.g. the chat is gone); otherwise the browser retries itself.
        if (source.readyState === EventSource.CLOSED) {
          htmx.trigger(elt, "sse:error", { error: "the stream closed" });
        }
      };
      return () => source.close();
    },
    onAppState(handler) {
      const source = new EventSource("/events");
      source.addEventListener("app-state", (e) => handler(JSON.parse(e.data)));
      let opened = false;
      source.addEventListener("open", () => {
        resync(handler, opened);
        opened = true;
      });
    },
  };

  /** News sent before we listened (the model became ready while the page loaded) is lost, and so is
   *  what a browser missed while disconnected: once listening, the page refreshes the model's state,
   *  and after a reconnect the chats too. */
  function resync(handler, reconnected) {
    handler({ trigger: "model-changed" });
    if (reconnected) handler({ trigger: "chats-changed" });
  }

  const transport = window.__TAURI__ && window.__TAURI__.event ? tauriTransport : httpTransport;

  // --- applying frames ------------------------------------------------------------------------------

  function state(elt) {
    if (!elt._smolSse) elt._smolSse = { lastId: 0, text: new Map(), raf: 0, detach: null };
    return elt._smolSse;
  }

  /** Applies one frame to a connected element unless it has seen that id already. */
  function deliver(elt, frame) {
    const st = state(elt);
    const only = elt.getAttribute("sse-message");
    if (only && frame.message != null && String(frame.message) !== only) return;
    if (frame.id <= st.lastId) return;
    st.lastId = frame.id;
    elt.setAttribute("sse-last-id", String(frame.id));
    swapInto(elt, frame);
    if (frame.event === "complete" || frame.event === "error") disconnect(elt);
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
    if (frame.event === "queued") st.waiting = frame.data !== "";
    else if (st.waiting && (frame.event === "thinking" || frame.event === "token" || frame.event === "tool")) {
      // The answer has begun: its place in the queue is old news.
      st.waiting = false;
      targetsFor(elt, "queued").forEach((t) => (t.textContent = ""));
    }
    for (const target of targetsFor(elt, frame.event)) {
      const mode = target.getAttribute("sse-render") || "text";
      if (mode === "tool") {
        renderToolCard(target, JSON.parse(frame.data));
      } else if (frame.event === "stats" || mode === "replace") {
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

  /** A `tool` frame's record ({index, name, arguments, status, result, duration_ms}) as the card
   *  `tool_card.html` renders: it replaces the card with its index, or is added after the others. */
  function renderToolCard(container, call) {
    const card = document.createElement("details");
    card.className = "tool-card status-" + call.status;
    card.dataset.toolIndex = String(call.index);
    const summary = document.createElement("summary");
    const part = (tag, cls, text) => {
      const e = document.createElement(tag);
      e.className = cls;
      e.textContent = text;
      summary.append(e, " ");
    };
    part("span", "tool-name", call.name || "malformed call");
    const args = typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments);
    part("code", "tool-args", args);
    part("span", "tool-status", call.status);
    const waiting = call.status === "running" || call.status === "pending";
    part("span", "tool-time", waiting ? "" : call.duration_ms + " ms");
    const result = document.createElement("pre");
    result.className = "tool-result";
    result.textContent = call.result;
    card.append(summary, result);
    if (call.status === "pending") {
      // Allow once / Always / Deny, as tool_card.html renders them.
      card.open = true;
      const msg = container.closest("article");
      const url = "/chats/" + msg.getAttribute("sse-connect") + "/messages/" +
        msg.getAttribute("sse-message") + "/tools/" + call.index + "/decide";
      const ask = document.createElement("div");
      ask.className = "tool-approval";
      ask.setAttribute("hx-swap", "none");
      ask.append("Run this tool? ");
      for (const [decision, label, cls] of [["once", "Allow once", "btn primary"],
        ["always", "Always for this tool", "btn"], ["deny", "Deny", "btn"]]) {
        const b = document.createElement("button");
        b.className = cls;
        b.textContent = label;
        b.setAttribute("hx-post", url);
        b.setAttribute("hx-vals", JSON.stringify({ decision }));
        ask.append(b, " ");
      }
      card.append(ask);
    }
    const old = container.querySelector('[data-tool-index="' + call.index + '"]');
    if (old) old.replaceWith(card);
    else container.append(card);
    if (call.status === "pending") htmx.process(card);
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

  function connect(elt) {
    const st = state(elt);
    seed(elt);
    st.lastId = parseInt(elt.getAttribute("sse-last-id") || "0", 10) || 0;
    // A page rendered while the answer waits shows its place already.
    st.waiting = targetsFor(elt, "queued").some((t) => t.textContent !== "");
    const chat = elt.getAttribute("sse-connect");
    st.detach = transport.attach(elt, chat, st.lastId, (frame) => deliver(elt, frame));
  }

  function disconnect(elt) {
    const st = elt._smolSse;
    if (st && st.detach) {
      st.detach();
      st.detach = null;
    }
  }

  htmx.defineExtension("smol-sse", {
    // htmx processes only elements with its own attributes, and new top-level nodes of a swap: a
    // connected element inside a page or a fragment (a chat opened while it answers, a reload) has
    // none, so it is named here to get its `htmx:afterProcessNode`.
    getSelectors: function () {
      return ["[sse-connect]"];
    },
    onEvent: function (name, evt) {
      const elt = evt.target || evt.detail.elt;
      if (name === "htmx:beforeCleanupElement" && elt && elt._smolSse) {
        disconnect(elt);
      } else if (name === "htmx:afterProcessNode" && elt && elt.hasAttribute && elt.hasAttribute("sse-connect")) {
        if (!elt._smolSse) connect(elt);
      }
      return true;
    },
  });

  /** Page-wide news (`app-state`): `{trigger, busy, chat, toast, kind}`; `app.js` applies it. */
  window.SmolStream = { onAppState: (handler) => transport.onAppState(handler) };
})();
