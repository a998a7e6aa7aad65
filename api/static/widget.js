/* atende web chat widget. Embed with:
 *   <script src="https://YOUR-HOST/widget.js" data-assistant="ASSISTANT_ID_OR_NAME"></script>
 * No build step, no dependencies. The API is the script's own origin. Text from the server or the
 * visitor is only ever inserted with textContent / text nodes, never as HTML. */
(function () {
  "use strict";

  var MARKS = { "**": "strong", "*": "strong", "_": "em", "~": "s" };
  // WhatsApp-style emphasis: a marker opens at the start or after a space/bracket and closes before
  // a space, punctuation or the end, so snake_case names and 2*3*4 stay as they are.
  var RICH = /(^|[\s([{"'])(\*\*|[*_~])(\S(?:[^\n]*?\S)?)\2(?=$|[\s.,;:!?)\]}"'])/g;

  /** Append `text` to `parent` with *bold*, _italic_, ~strike~ and line breaks, as DOM nodes. */
  function renderRich(doc, parent, text) {
    String(text).split("\n").forEach(function (line, i) {
      if (i) parent.appendChild(doc.createElement("br"));
      var last = 0, m;
      RICH.lastIndex = 0;
      while ((m = RICH.exec(line))) {
        var start = m.index + m[1].length;
        parent.appendChild(doc.createTextNode(line.slice(last, start)));
        var mark = doc.createElement(MARKS[m[2]]);
        mark.textContent = m[3];
        parent.appendChild(mark);
        last = m.index + m[0].length;
      }
      parent.appendChild(doc.createTextNode(line.slice(last)));
    });
  }

  if (typeof document === "undefined") { // loaded by the tests in Node
    if (typeof module !== "undefined") module.exports = { renderRich: renderRich };
    return;
  }

  var script = document.currentScript;
  var assistant = script && script.getAttribute("data-assistant");
  if (!assistant) {
    if (window.console) console.warn("atende widget: the script tag needs data-assistant");
    return;
  }
  var base = new URL(script.src, window.location.href).origin;
  var api = base + "/api/widget/" + encodeURIComponent(assistant) + "/";
  var storageKey = "atende-widget:" + base + ":" + assistant;
  var T = /^pt\b/i.test(navigator.language || "") ? {
    chat: "Chat", open: "Abrir o chat", close: "Fechar", placeholder: "Escreva sua mensagem…", send: "Enviar",
    error: "Não foi possível enviar agora. Tente novamente.", slow: "Muitas mensagens seguidas. Aguarde {s} s.",
    busy: "O assistente está ocupado. Tente novamente em {s} s.",
    human: "Um atendente vai continuar esta conversa.", sources: "Fontes: ",
    good: "Resposta útil", bad: "Resposta não útil", thanks: "Obrigado!"
  } : {
    chat: "Chat", open: "Open chat", close: "Close", placeholder: "Type your message…", send: "Send",
    error: "Could not send right now. Please try again.", slow: "Too many messages. Please wait {s} s.",
    busy: "The assistant is busy. Please try again in {s} s.",
    human: "A human agent will continue this conversation.", sources: "Sources: ",
    good: "Helpful answer", bad: "Unhelpful answer", thanks: "Thanks!"
  };

  var token = null;
  try { token = window.localStorage.getItem(storageKey); } catch (e) { /* storage blocked: this page only */ }

  function saveToken(value) {
    token = value;
    try {
      if (value) window.localStorage.setItem(storageKey, value); else window.localStorage.removeItem(storageKey);
    } catch (e) { /* storage blocked */ }
  }

  function call(path, body) {
    var init = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    };
    return fetch(api + path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.ok) return data;
        var err = new Error(typeof data.detail === "string" ? data.detail : "HTTP " + r.status);
        err.status = r.status;
        err.retryAfter = r.headers.get("Retry-After");
        throw err;
      });
    });
  }

  function wait(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  /** A random id for a message, so sending it again after a network error stores it once. */
  function messageId() {
    var bytes = new Uint8Array(16), out = "";
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out;
  }

  // The reply is computed in the background: ask for it every POLL_MS until it is there (a turn has a
  // deadline of its own, 3 minutes by default). Network errors and busy answers only delay the next ask.
  var POLL_MS = 1000, POLL_FOR_MS = 200000;
  function reply(id) {
    var until = Date.now() + POLL_FOR_MS;
    function ask() {
      return wait(POLL_MS).then(function () {
        return call("messages/" + encodeURIComponent(id) + "/reply", { token: token });
      }).then(function (res) {
        return res.status === "pending" && Date.now() < until ? ask() : res;
      }, function (err) {
        if ((!err.status || err.status >= 500 || err.status === 429) && Date.now() < until) return ask();
        throw err;
      });
    }
    return ask();
  }

  function session(fresh) {
    if (token && !fresh) return Promise.resolve(token);
    return call("session", {}).then(function (s) { saveToken(s.token); return s.token; });
  }

  // --- the interface, in a shadow root so the page's CSS and ours do not mix ---------------------
  var CSS = ":host{all:initial}*{box-sizing:border-box;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}" +
    "[hidden]{display:none!important}" +
    ".bubble{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:#128c7e;" +
    "cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483646;display:flex;align-items:center;justify-content:center}" +
    ".icon{position:relative;width:26px;height:19px;background:#fff;border-radius:6px}" +
    ".icon:after{content:'';position:absolute;left:5px;bottom:-6px;border:6px solid transparent;border-top-color:#fff;border-bottom:0}" +
    ".panel{position:fixed;right:20px;bottom:88px;width:340px;max-width:calc(100vw - 40px);height:480px;" +
    "max-height:calc(100vh - 120px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;" +
    "flex-direction:column;overflow:hidden;z-index:2147483647;font-size:14px;color:#111}" +
    ".head{background:#128c7e;color:#fff;padding:12px 14px;display:flex;align-items:center;justify-content:space-between;font-weight:600}" +
    ".close{background:none;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1}" +
    ".log{flex:1;overflow-y:auto;padding:12px;background:#efeae2;display:flex;flex-direction:column;gap:6px}" +
    ".msg{max-width:85%;padding:7px 10px;border-radius:8px;line-height:1.4;overflow-wrap:anywhere}" +
    ".bot{background:#fff;align-self:flex-start}.me{background:#d9fdd3;align-self:flex-end}" +
    ".note{align-self:center;font-size:12px;color:#555;text-align:center}.src{margin-top:4px;font-size:11px;color:#667}" +
    ".typing span{display:inline-block;width:6px;height:6px;margin:0 2px;border-radius:50%;background:#999;animation:dot 1.2s infinite}" +
    ".typing span:nth-child(2){animation-delay:.2s}.typing span:nth-child(3){animation-delay:.4s}" +
    "@keyframes dot{0%,80%,100%{opacity:.25}40%{opacity:1}}" +
    ".form{display:flex;gap:6px;padding:8px;border-top:1px solid #ddd}" +
    "textarea{flex:1;resize:none;border:1px solid #ccc;border-radius:8px;padding:8px;font-size:14px;max-height:96px}" +
    ".send{background:#128c7e;color:#fff;border:0;border-radius:8px;padding:0 14px;cursor:pointer}" +
    ".send:disabled,textarea:disabled{opacity:.5;cursor:default}" +
    ".rate{margin-top:4px;display:flex;gap:4px;align-items:center;font-size:11px;color:#667}" +
    ".thumb{background:none;border:1px solid #ccc;border-radius:6px;padding:1px 6px;font-size:13px;cursor:pointer}" +
    ".thumb[aria-pressed=true]{background:#d9fdd3;border-color:#128c7e}.thumb:disabled{cursor:default}" +
    ".thumb:disabled:not([aria-pressed=true]){opacity:.4}" +
    ".choices{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px}.choice{background:#fff;border:1px solid #128c7e;" +
    "color:#128c7e;border-radius:14px;padding:3px 10px;font-size:13px;cursor:pointer}.choice:disabled{opacity:.5;cursor:default}";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  var host = el("div");
  host.setAttribute("data-atende-widget", assistant);
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var bubble = el("button", "bubble");
  bubble.type = "button";
  bubble.setAttribute("aria-label", T.open);
  bubble.setAttribute("aria-expanded", "false");
  bubble.appendChild(el("span", "icon"));
  var panel = el("div", "panel");
  panel.setAttribute("role", "dialog");
  panel.hidden = true;
  var head = el("div", "head");
  var title = el("span", "title", T.chat);
  var closeBtn = el("button", "close", "\u00d7");
  closeBtn.type = "button";
  closeBtn.setAttribute("aria-label", T.close);
  head.append(title, closeBtn);
  var log = el("div", "log");
  log.setAttribute("aria-live", "polite");
  var typing = el("div", "msg bot typing");
  typing.append(el("span"), el("span"), el("span"));
  var form = el("form", "form");
  var input = el("textarea");
  input.rows = 1;
  input.maxLength = 2000;
  input.placeholder = T.placeholder;
  var sendBtn = el("button", "send", T.send);
  sendBtn.type = "submit";
  form.append(input, sendBtn);
  panel.append(head, log, form);
  root.append(el("style", null, CSS), panel, bubble);

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  // `reply` ({id, rating}) marks an AI reply the visitor may rate
  function add(direction, text, sources, reply) {
    var m = el("div", "msg " + (direction === "inbound" ? "me" : "bot"));
    renderRich(document, m, text);
    if (sources && sources.length) {
      m.appendChild(el("div", "src", T.sources + sources.map(function (s) {
        return s.filename + (s.page ? " p. " + s.page : "");
      }).join("; ")));
    }
    if (reply) m.appendChild(thumbs(reply.id, reply.rating));
    log.appendChild(m);
    scrollDown();
    return m;
  }

  /** Thumbs up / down under a reply; both are disabled once one is chosen (re-enabled if sending fails). */
  function thumbs(messageId, rating) {
    var row = el("div", "rate");
    var buttons = [["good", "\uD83D\uDC4D", T.good], ["bad", "\uD83D\uDC4E", T.bad]].map(function (o) {
      var b = el("button", "thumb", o[1]);
      b.type = "button";
      b.value = o[0];
      b.setAttribute("aria-label", o[2]);
      b.title = o[2];
      row.appendChild(b);
      return b;
    });
    var thanks = el("span", null, "");
    row.appendChild(thanks);
    function mark(chosen) {
      buttons.forEach(function (b) { b.disabled = !!chosen; b.setAttribute("aria-pressed", String(b.value === chosen)); });
    }
    mark(rating);
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        mark(b.value);
        call("messages/" + encodeURIComponent(messageId) + "/feedback", { token: token, rating: b.value })
          .then(function () { thanks.textContent = T.thanks; }, function () { mark(null); });
      });
    });
    return row;
  }

  /** The options offered with a reply, as buttons: a click sends the option's text (once; all are then disabled). */
  function choices(options) {
    var row = el("div", "choices");
    options.forEach(function (o) {
      var b = el("button", "choice", o.title);
      b.type = "button";
      b.addEventListener("click", function () {
        Array.prototype.forEach.call(row.children, function (c) { c.disabled = true; });
        send(o.title);
      });
      row.appendChild(b);
    });
    return row;
  }

  function note(text) { log.appendChild(el("div", "note", text)); scrollDown(); }

  function setBusy(busy, showTyping) {
    input.disabled = sendBtn.disabled = busy;
    if (busy && showTyping) log.appendChild(typing); else if (typing.parentNode) log.removeChild(typing);
    scrollDown();
    if (!busy && !panel.hidden) input.focus();
  }

  var started = false;
  function start() {
    started = true;
    setBusy(true, false);
    call("config").then(function (c) {
      if (c.title) title.textContent = c.title;
      if (c.greeting) add("outbound", c.greeting);
      if (!token) return;
      return call("history", { token: token }).then(function (h) {
        h.messages.forEach(function (m) {
          add(m.direction, m.text, null, m.rateable ? { id: m.message_id, rating: m.rating } : null);
        });
        if (!h.ai_enabled) note(T.human);
      }, function (err) { if (err.status === 401) saveToken(null); });
    }).catch(function () { started = false; note(T.error); })
      .then(function () { setBusy(false); });
  }

  function send(text) {
    var mine = add("inbound", text);
    setBusy(true, true);
    var id = messageId();
    var post = function (t) { return call("messages", { token: t, message: text, client_message_id: id }); };
    session(false).then(post).catch(function (err) {
      if (!err.status) return wait(POLL_MS).then(function () { return session(false); }).then(post); // once more: stored once
      if (err.status !== 401) throw err;
      return session(true).then(post); // the token is no longer valid (e.g. a new secret): start over
    }).then(function (accepted) { return reply(accepted.message_id); }).then(function (res) {
      setBusy(false);
      if (res.reply) {
        var m = add("outbound", res.reply, res.sources, res.message_id ? { id: res.message_id, rating: null } : null);
        if (res.options && res.options.length) m.appendChild(choices(res.options));
      }
      else if (res.status === "pending" || res.status === "error") note(T.error);
      else if (!res.ai_enabled) note(T.human);
    }, function (err) {
      setBusy(false);
      if (err.status === 429 || err.status === 503) {
        log.removeChild(mine); // not sent: back in the box, ready to send again
        if (!input.value) input.value = text;
        note((err.status === 429 ? T.slow : T.busy).replace("{s}", err.retryAfter || "60"));
      } else note(T.error);
    });
  }

  function toggle(open) {
    panel.hidden = !open;
    bubble.setAttribute("aria-expanded", String(open));
    if (open && !started) start(); else if (open) input.focus(); else bubble.focus();
  }

  bubble.addEventListener("click", function () { toggle(panel.hidden); });
  closeBtn.addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : submit(e); }
  });
  function submit(e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || input.disabled) return;
    input.value = "";
    send(text);
  }
  form.addEventListener("submit", submit);

  function mount() { document.body.appendChild(host); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
