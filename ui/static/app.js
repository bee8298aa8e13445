// Page behaviour that htmx attributes do not cover: Markdown rendering of model output (marked, then
// DOMPurify with every htmx attribute stripped, so model output can never drive the page), the composer's
// keys, the command palette, copy buttons, syntax highlighting, keyboard shortcuts and scroll pinning.
(function () {
  "use strict";

  // Model text is data. Nothing in it may become an htmx instruction, a script, a form or a style.
  const PURIFY = {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "svg", "math"],
    FORBID_ATTR: ["style", "id", "class", "name"],
    ALLOW_DATA_ATTR: false,
    ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i,
    // DOMPurify checks the value of every attribute not marked URI-safe against ALLOWED_URI_REGEXP:
    // ours (links only to the web or mail) would strip `<ol start="3">` (a list continued after a code
    // block restarts at 1) and `<td align="right">`. Their values are never URLs.
    ADD_URI_SAFE_ATTR: ["start", "align"],
  };
  DOMPurify.addHook("uponSanitizeAttribute", (_node, data) => {
    const n = data.attrName.toLowerCase();
    if (n.startsWith("hx-") || n.startsWith("data-hx-") || n.startsWith("sse-") || n.startsWith("on")) {
      data.keepAttr = false;
    }
  });
  // The one class model output keeps: a code block's language (`language-rust`, from the fence), which
  // picks its highlighting. It names nothing in our CSS and no htmx behaviour.
  DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
    if (node.tagName === "CODE" && data.attrName === "class" && /^language-[\w#+.-]{1,40}$/.test(data.attrValue)) {
      data.forceKeepAttr = true;
    }
  });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("rel", "noopener noreferrer");
      node.setAttribute("target", "_blank");
      // Where a link goes is visible before it is followed (the text may say anything).
      node.setAttribute("title", node.getAttribute("href"));
    }
  });
  marked.setOptions({ gfm: true, breaks: false });

  function renderMarkdown(text) {
    return DOMPurify.sanitize(marked.parse(text), PURIFY);
  }

  /** Replaces `target`'s children with the sanitized rendering of `text`; htmx never processes it. */
  function renderMarkdownInto(target, text) {
    target.setAttribute("hx-disable", "");
    target.innerHTML = renderMarkdown(text);
    target.querySelectorAll("pre > code").forEach((code) => {
      addCopyButton(code);
      highlightCode(code);
    });
  }

  // --- syntax highlighting ----------------------------------------------------------------------------
  // highlight.js's core comes with the page; a language's module is loaded the first time a code block
  // names it. `aliases.json` (made by ui/build.mjs from the package) maps every name and alias to its module.
  let aliases = null;
  const languages = new Map(); // module name -> Promise<boolean>: registered

  function languageOf(tag) {
    aliases ??= fetch("/vendor/highlight/aliases.json").then((r) => {
      if (!r.ok) throw new Error(`aliases.json: HTTP ${r.status}`);
      return r.json();
    });
    return aliases.then((map) => (Object.hasOwn(map, tag) ? map[tag] : null));
  }

  function loadLanguage(name) {
    if (!languages.has(name)) {
      const loaded = import(`/vendor/highlight/languages/${name}.js`).then((m) => {
        window.hljs.registerLanguage(name, m.default);
        return true;
      });
      languages.set(name, loaded);
    }
    return languages.get(name);
  }

  /** Colours `code` when its fence named a language highlight.js knows; other blocks stay plain text. */
  async function highlightCode(code) {
    const m = /(?:^|\s)language-([\w#+.-]+)/.exec(code.className);
    if (!m || !window.hljs) return;
    try {
      const name = await languageOf(m[1].toLowerCase());
      if (!name) return;
      await loadLanguage(name);
      // While the answer streams, each frame renders anew: this block may be gone by now.
      if (!code.isConnected || code.classList.contains("hljs")) return;
      code.innerHTML = window.hljs.highlight(code.textContent, { language: name, ignoreIllegals: true }).value;
      code.classList.add("hljs");
    } catch (err) {
      console.warn("syntax highlighting failed:", err);
    }
  }

  function addCopyButton(code) {
    const pre = code.parentElement;
    if (pre.querySelector(".copy-code")) return;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "copy-code";
    b.textContent = "Copy";
    b.addEventListener("click", () => copyText(code.textContent, b));
    pre.append(b);
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const old = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = old), 1200);
    }
  }

  /** Stored messages arrive as escaped text in `[data-markdown]`; render them once they are in the page. */
  function renderStored(root) {
    root.querySelectorAll("[data-markdown]").forEach((el) => {
      if (el.dataset.rendered) return;
      el.dataset.rendered = "1";
      renderMarkdownInto(el, el.textContent);
    });
  }

  // --- composer -------------------------------------------------------------------------------------
  function onComposerKey(e) {
    const area = e.target;
    if (!area.matches("textarea[data-composer]")) return;
    const palette = document.getElementById("palette");
    if (palette && !palette.hidden && (e.key === "ArrowDown" || e.key === "ArrowUp" || e.key === "Tab")) {
      e.preventDefault();
      movePalette(palette, e.key === "ArrowUp" ? -1 : 1, area, e.key === "Tab");
      return;
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (palette && !palette.hidden) {
        const sel = palette.querySelector("[aria-selected=true]");
        if (sel && area.value.trim() !== sel.dataset.command) {
          area.value = sel.dataset.command + " ";
          palette.hidden = true;
          return;
        }
      }
      if (area.value.trim() === "" || area.form.hasAttribute("data-busy")) return;
      htmx.trigger(area.form, "submit");
    } else if (e.key === "Escape" && palette && !palette.hidden) {
      // Escape closes the palette first; only a second one stops an answer (see shortcuts).
      e.preventDefault();
      palette.hidden = true;
    }
  }

  function movePalette(palette, step, area, accept) {
    const items = [...palette.querySelectorAll("[data-command]")];
    if (!items.length) return;
    let i = items.findIndex((x) => x.getAttribute("aria-selected") === "true");
    if (accept && i >= 0) {
      area.value = items[i].dataset.command + " ";
      palette.hidden = true;
      return;
    }
    i = (i + step + items.length) % items.length;
    items.forEach((x, j) => x.setAttribute("aria-selected", j === i ? "true" : "false"));
  }

  function autoGrow(area) {
    area.style.height = "auto";
    area.style.height = Math.min(area.scrollHeight, 240) + "px";
  }

  document.addEventListener("keydown", onComposerKey);

  // --- keyboard shortcuts -----------------------------------------------------------------------------
  // New chat: Ctrl+Shift+O (⌘⇧O on a Mac); search chats: Ctrl+K (⌘K); stop the answer: Escape.
  const MAC = /Mac|iPhone|iPad/.test(navigator.platform);
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    const mod = MAC ? e.metaKey && !e.ctrlKey : e.ctrlKey && !e.metaKey;
    const key = e.key.toLowerCase();
    if (mod && e.shiftKey && !e.altKey && key === "o") {
      const button = document.getElementById("new-chat");
      if (!button) return;
      e.preventDefault();
      button.click();
    } else if (mod && !e.shiftKey && !e.altKey && key === "k") {
      const search = document.querySelector("input.search");
      if (!search) return;
      e.preventDefault();
      search.focus();
      search.select();
    } else if (key === "escape" && !mod && !e.shiftKey && !e.altKey) {
      const stop = document.querySelector("form[data-composer-form][data-busy] .stop");
      if (!stop) return;
      e.preventDefault();
      stop.click();
    }
  });
  document.addEventListener("input", (e) => {
    if (!e.target.matches("textarea[data-composer]")) return;
    autoGrow(e.target);
    // Typing takes the follow-up suggestions away, and cancels them while they are being made:
    // told once per answer (the mark goes when the text is sent).
    const form = e.target.closest("form[data-composer-form]");
    if (form && form.dataset.chat && !form.hasAttribute("data-typed")) {
      form.setAttribute("data-typed", "");
      htmx.ajax("POST", `/chats/${form.dataset.chat}/follow-ups/dismiss`, { swap: "none" });
    }
  });
  // A link in an answer opens in the system browser, never inside the app. A browser tab does that by
  // itself (`target=_blank`); the desktop app's webview would do nothing, so the shell is asked to.
  document.addEventListener("click", (e) => {
    const link = e.target.closest && e.target.closest(".md a[href]");
    if (!link || !window.__TAURI__) return;
    e.preventDefault();
    htmx.ajax("POST", "/open-link", { values: { url: link.getAttribute("href") }, swap: "none" });
  });

  document.addEventListener("click", (e) => {
    const item = e.target.closest("#palette [data-command]");
    if (item) {
      const area = document.querySelector("textarea[data-composer]");
      area.value = item.dataset.command + " ";
      document.getElementById("palette").hidden = true;
      area.focus();
    }
    const dismiss = e.target.closest("[data-dismiss]");
    if (dismiss) dismiss.closest(".notice")?.remove();
    // "Remove this server" in the settings: its entry leaves the form (saving makes it final).
    const remove = e.target.closest("[data-remove-closest]");
    if (remove) remove.closest(remove.dataset.removeClosest)?.remove();
    const copy = e.target.closest("[data-copy-from]");
    if (copy) {
      const src = document.getElementById(copy.dataset.copyFrom);
      if (src) copyText(src.dataset.raw ?? src.textContent, copy);
    }
  });

  // After sending (the composer, quick chat), clear the text field; a refusal answers with a toast and
  // `request-failed`, and the text stays to be sent again.
  document.addEventListener("htmx:afterRequest", (e) => {
    const form = e.detail.elt;
    if (!(form.matches && form.matches("form[data-clear-on-send]") && e.detail.successful)) return;
    if (e.detail.xhr && e.detail.xhr.getResponseHeader("HX-Trigger")?.includes("request-failed")) return;
    form.removeAttribute("data-typed");
    const field = form.querySelector("textarea, input[name=text]");
    if (!field) return; // a follow-up chip: nothing typed to clear
    field.value = "";
    if (field.matches("textarea")) autoGrow(field);
    const palette = document.getElementById("palette");
    if (palette) palette.hidden = true;
  });

  document.addEventListener("scroll", (e) => {
    const s = e.target;
    if (s.dataset && "scroll" in s.dataset) {
      s.dataset.pinned = String(s.scrollHeight - s.scrollTop - s.clientHeight < 40);
    }
  }, true);

  /** The sidebar marks the chat that is open in the conversation pane, and in a browser the address
   *  bar names it (`/chats/ID` serves the whole page), so a reload or a bookmark shows that chat. */
  function markActiveChat() {
    const conversation = document.getElementById("conversation");
    if (!conversation) return;
    const title = conversation.querySelector("[id^=chat-title-]");
    const id = title ? title.id.slice("chat-title-".length) : null;
    document.querySelectorAll("#chat-list .chat-item").forEach((item) => {
      item.classList.toggle("active", id !== null && item.id === "chat-item-" + id);
    });
    const path = id === null ? "/" : "/chats/" + id;
    if (!window.__TAURI__ && location.pathname !== path) history.replaceState(null, "", path);
  }

  htmx.onLoad((root) => {
    renderStored(root);
    markActiveChat();
    const scroller = document.querySelector("[data-scroll]");
    if (scroller && scroller.dataset.pinned !== "false") scroller.scrollTop = scroller.scrollHeight;
    const area = root.querySelector && root.querySelector("textarea[data-composer][autofocus]");
    if (area) area.focus();
  });

  // Page-wide triggers from Rust (`app-state` events): `model-changed`, `chats-changed`, a toast, busy state.
  function showToast(text, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const t = document.createElement("div");
    t.className = "toast " + (kind || "");
    t.setAttribute("role", "status");
    t.textContent = text;
    box.append(t);
    setTimeout(() => t.remove(), 6000);
  }
  // Page-wide news reaches us over the page's transport (Tauri events in the app, SSE in a browser).
  function applyNews(p) {
    if (p.toast) showToast(p.toast, p.kind);
    if (p.busy !== undefined) {
      document.querySelectorAll("form[data-composer-form]").forEach((f) => {
        if (String(p.chat) === f.dataset.chat) f.toggleAttribute("data-busy", p.busy);
      });
    }
    if (p.trigger) {
      htmx.trigger(document.body, p.trigger, p);
      // News about one chat also goes out under a name of its own ("follow-ups-changed-7"), so an
      // element listens for its chat without an hx-trigger filter (filters need eval, which the
      // page's CSP forbids: htmx:evalDisallowedError).
      if (p.chat !== undefined) htmx.trigger(document.body, p.trigger + "-" + p.chat, p);
    }
  }
  // News is applied to the page's elements: listen once htmx has processed them (its own
  // DOMContentLoaded handler runs first, as htmx loads before this file). Listening earlier, the
  // refresh sent when the stream opens could reach a page without <body> or htmx's listeners.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => window.SmolStream.onAppState(applyNews));
  } else {
    window.SmolStream.onAppState(applyNews);
  }

  window.SmolUI = { renderMarkdown, renderMarkdownInto, copyText, showToast };
})();
