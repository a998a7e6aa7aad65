// The dashboard's interactivity: calls to the JSON API with the session cookie (same origin), and
// rendering of their answers with textContent only -- customer text is never parsed as HTML.
"use strict";
(function () {
  // The page's language: the translations of the strings marked with _() below (api/i18n.py puts them in the
  // page) and its way of writing numbers. Placeholders are gettext's %(name)s, as in the templates.
  const MESSAGES = JSON.parse((document.getElementById("i18n-messages") || {}).textContent || "{}");
  const LANG = document.documentElement.lang || "en";

  function _(message, values) {
    const text = MESSAGES[message] || message;
    return values ? text.replace(/%\((\w+)\)s/g, (m, key) => (key in values ? String(values[key]) : m)) : text;
  }

  const TURN_STATUSES = { answered: _("answered"), smalltalk: _("small talk"), fallback: _("fallback"),
    handoff: _("handoff"), paused: _("paused"), error: _("error") };  // as api/labels.py words them

  function decimal(v, digits) {
    return new Intl.NumberFormat(LANG, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(v);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === "") continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function describe(data, response) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) {
      return data.detail.map((d) => (d.loc ? d.loc.slice(1).join(".") + ": " : "") + d.msg).join("; ");
    }
    return response.status + " " + response.statusText;
  }

  async function api(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const response = await fetch(url, opts);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (response.status === 401) {  // the session expired: sign in again, then come back
      location.href = "/dashboard/login?next=" + encodeURIComponent(location.pathname + location.search);
    }
    if (!response.ok) {
      const err = new Error(describe(data, response));
      err.status = response.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  function showError(node, message) {
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Re-render one element from a fresh copy of this page (one template renders it, server-side).
  async function refreshFragment(id) {
    const response = await fetch(location.href, { credentials: "same-origin" });
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById(id);
    const old = document.getElementById(id);
    if (fresh && old) old.replaceWith(document.importNode(fresh, true));
    return document.getElementById(id);
  }

  function money(v) {  // as the pages' money filter: USD, four decimals below a dollar
    const n = Number(v || 0);
    return new Intl.NumberFormat(LANG, { style: "currency", currency: "USD", minimumFractionDigits: n < 1 ? 4 : 2,
      maximumFractionDigits: n < 1 ? 4 : 2 }).format(n);
  }

  function sourceNode(s) {
    const meta = el("div", { class: "src-meta" }, `[${s.rank}] `, el("b", {}, s.filename),
      s.page ? " · " + _("page %(page)s", { page: s.page }) : "", s.section ? ` · ${s.section}` : "",
      " · " + _("score %(score)s", { score: decimal(Number(s.score), 3) }));
    return el("div", { class: "source" }, meta, el("blockquote", { class: "passage" }, s.text));
  }

  function callNode(f) {
    return el("details", { class: "call" },
      el("summary", {}, _("function") + " ", el("code", {}, f.name),
        f.error ? el("span", { class: "error small" }, " " + _("error")) : "",
        " · " + _("round %(n)s", { n: f.round }) + ` · ${f.duration_ms} ms`),
      el("div", { class: "kv" }, el("b", {}, _("arguments")), el("pre", {}, JSON.stringify(f.arguments, null, 2))),
      f.result !== null && f.result !== undefined ? el("div", { class: "kv" }, el("b", {}, _("result")), el("pre", {}, f.result)) : "",
      f.error ? el("div", { class: "kv" }, el("b", {}, _("error")), el("pre", { class: "error" }, f.error)) : "");
  }

  // ------------------------------------------------------------------ approved answers and review forms

  const lines = (text) => (text || "").split("\n").map((l) => l.trim()).filter((l) => l);
  const REVIEWER = "atende.reviewer";  // the name reviewers sign with, remembered by this browser

  function fillReviewer(root) {
    let name = "";
    try { name = localStorage.getItem(REVIEWER) || ""; } catch (e) { /* storage disabled */ }
    root.querySelectorAll("input.reviewer").forEach((input) => { if (!input.value) input.value = name; });
  }

  function keepReviewer(name) {
    try { if (name && name.trim()) localStorage.setItem(REVIEWER, name.trim()); } catch (e) { /* storage disabled */ }
  }

  // The fields of an approved-answer form: question, answer, variants (one per line), approved_by.
  function approvedBody(form) {
    const body = { question: form.elements.question.value, answer: form.elements.answer.value,
      variants: lines(form.elements.variants.value) };
    if (form.elements.approved_by) {
      body.approved_by = form.elements.approved_by.value;
      keepReviewer(body.approved_by);
    }
    return body;
  }

  // Run an action of a form or button: its buttons disabled meanwhile, the API's error shown in errorBox.
  async function act(errorBox, control, action) {
    showError(errorBox, "");
    const buttons = control ? (control.tagName === "FORM" ? control.querySelectorAll("button") : [control]) : [];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await action();
      return true;
    } catch (e) {
      showError(errorBox, e.message);
      return false;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // ------------------------------------------------------------------ conversation detail

  function initConversation() {
    const box = document.getElementById("conversation");
    const errorBox = document.getElementById("action-error");
    const id = encodeURIComponent(box.dataset.id);
    const run = async (form, action) => {
      if (await act(errorBox, form, action)) location.reload();
    };
    const toggle = document.getElementById("toggle-ai");
    if (toggle) toggle.addEventListener("click", () =>
      run(null, () => api("POST", `/api/conversations/${id}/ai`, { enabled: false })));
    const handBack = document.getElementById("hand-back");
    if (handBack) handBack.addEventListener("click", () =>
      run(null, () => api("POST", `/api/conversations/${id}/handback`, { reason: "an operator handed it back" })));
    const close = document.getElementById("close-conversation");
    if (close) close.addEventListener("click", () => run(null, () => api("POST", `/api/conversations/${id}/close`)));
    const reply = document.getElementById("operator-reply");
    if (reply) reply.addEventListener("submit", (ev) => {
      ev.preventDefault();
      run(reply, () => api("POST", `/api/conversations/${id}/messages`, { text: reply.elements.text.value }));
    });
    initReviews(box);
    const template = document.getElementById("send-template");
    if (template && template.elements.template) {
      template.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const [name, language] = template.elements.template.value.split("|");
        const parameters = template.elements.parameters.value.split("\n").map((p) => p.trim()).filter((p) => p);
        if (!template.dataset.sender) {
          showError(errorBox, _("This conversation's business number is not registered as a sender."));
          return;
        }
        run(template, () => api("POST", "/api/whatsapp/messages/template", {
          sender_id: template.dataset.sender, customer_id: template.dataset.customer, name, language, parameters,
        }));
      });
    }
  }

  // Under each AI reply: approve it (as is or edited), rate it, make a regression case of it.
  function initReviews(box) {
    const assistant = encodeURIComponent(box.dataset.assistant);
    fillReviewer(box);
    const approve = (review) => {
      const form = review.querySelector(".approve-form");
      return api("POST", `/api/assistants/${assistant}/approved-answers`,
        { ...approvedBody(form), sources: JSON.parse(form.dataset.sources || "[]") });
    };
    const handle = async (ev, control, action) => {
      ev.preventDefault();
      const review = control.closest(".review");
      const message = encodeURIComponent(review.dataset.message);
      if (await act(review.querySelector(".review-error"), control, () => action(review, message))) location.reload();
    };
    box.addEventListener("click", (ev) => {
      const button = ev.target.closest(".review button[data-action]");
      if (!button) return;
      if (button.dataset.action === "approve") handle(ev, button, approve);
      if (button.dataset.action === "unrate") {
        handle(ev, button, () => api("DELETE", `/api/feedback/${encodeURIComponent(button.closest("li").dataset.id)}`));
      }
    });
    box.addEventListener("submit", (ev) => {
      const form = ev.target;
      if (form.classList.contains("approve-form")) handle(ev, form, approve);
      if (form.classList.contains("rate-form")) {
        const rating = ev.submitter ? ev.submitter.value : "good";
        keepReviewer(form.elements.author.value);
        handle(ev, form, (review, message) => api("POST", `/api/messages/${message}/feedback`, {
          rating, reason: rating === "bad" ? form.elements.reason.value || null : null,
          comment: form.elements.comment.value || null, author: form.elements.author.value || null,
        }));
      }
      if (form.classList.contains("case-form")) {
        handle(ev, form, (review, message) => api("POST", `/api/messages/${message}/regression-case`, {
          facts: lines(form.elements.facts.value), note: form.elements.note.value || null,
        }));
      }
    });
  }

  // ------------------------------------------------------------------ approved answers

  function initApproved() {
    const box = document.getElementById("approved-page");
    if (!box) return;
    const assistant = encodeURIComponent(box.dataset.assistant);
    fillReviewer(box);
    const refresh = () => refreshFragment("approved-list");

    box.addEventListener("submit", async (ev) => {
      const form = ev.target;
      if (!form.classList.contains("approved-form")) return;
      ev.preventDefault();
      const body = approvedBody(form);
      if (form.elements.clear_flag && form.elements.clear_flag.checked) body.needs_review = false;
      if (await act(form.querySelector(".form-error"), form, () => api(form.dataset.method, form.dataset.url, body))) {
        if (form.dataset.method === "POST") form.reset();
        fillReviewer(box);
        await refresh();
      }
    });

    box.addEventListener("click", async (ev) => {
      const button = ev.target.closest("article.approved button[data-action]");
      if (!button) return;
      const item = button.closest("article.approved");
      const url = `/api/approved-answers/${encodeURIComponent(item.dataset.id)}`;
      const errorBox = item.querySelector(".item-error");
      let done;
      if (button.dataset.action === "delete") {
        if (!confirm(_('Delete the approved answer to "%(question)s"?', { question: item.querySelector(".question").textContent }))) return;
        done = await act(errorBox, button, () => api("DELETE", url));
      } else {
        done = await act(errorBox, button, () => api("PATCH", url, { needs_review: false }));
      }
      if (done) await refresh();
    });

    const upload = document.getElementById("import");
    const report = document.getElementById("import-report");
    if (upload) upload.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      report.replaceChildren();
      keepReviewer(upload.elements.approved_by.value);
      const data = new FormData(upload);
      const name = upload.elements.file.files[0] ? upload.elements.file.files[0].name : "";
      const errorBox = el("p", { class: "error", role: "alert", hidden: true });
      report.append(errorBox);
      await act(errorBox, upload, async () => {
        const r = await api("POST", `/api/assistants/${assistant}/approved-answers/import`, data);
        const counts = { imported: r.imported, updated: r.updated, errors: r.errors.length };
        report.append(el("p", { class: r.errors.length ? "" : "ok" },
          `${name}: ` + (r.errors.length === 1
            ? _("%(imported)s imported, %(updated)s updated, %(errors)s row with errors", counts)
            : _("%(imported)s imported, %(updated)s updated, %(errors)s rows with errors", counts))),
        r.errors.length ? el("ul", { class: "messages", id: "import-errors" },
          r.errors.map((e) => el("li", { class: "error" }, _("row %(row)s: %(error)s", { row: e.row, error: e.error })))) : "");
        upload.reset();
        fillReviewer(box);
        await refresh();
      });
    });
  }

  // An inline form writing an approved answer for ``question`` (the Improve page's gaps and clusters).
  function answerForm(assistantId, question, examples, onClose) {
    const form = el("form", {},
      el("label", {}, _("Question"), el("input", { name: "question", value: question, required: true, maxlength: "1000" })),
      el("label", {}, _("Other phrasings, one per line (optional)"), el("textarea", { name: "variants", rows: "2" })),
      el("label", {}, _("Answer"), el("textarea", { name: "answer", rows: "3", required: true, maxlength: "4096" })),
      el("label", {}, _("Approved by"), el("input", { name: "approved_by", class: "reviewer", maxlength: "200" })),
      el("div", { class: "inline" }, el("button", { type: "submit" }, _("Save the approved answer")),
        el("button", { type: "button", class: "small" }, _("Cancel"))),
      el("p", { class: "error small", role: "alert", hidden: true }));
    form.elements.variants.value = examples.filter((q) => q !== question).join("\n");
    fillReviewer(form);
    form.querySelector("button[type=button]").addEventListener("click", () => onClose(null));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const ok = await act(form.querySelector("p.error"), form, () =>
        api("POST", `/api/assistants/${encodeURIComponent(assistantId)}/approved-answers`, approvedBody(form)));
      if (ok) {
        onClose(el("p", { class: "ok small" }, _("Saved as an approved answer.") + " ",
          el("a", { href: `/dashboard/approved?assistant_id=${encodeURIComponent(assistantId)}` }, _("Approved answers"))));
      }
    });
    return form;
  }

  // A "Write the answer" button that opens answerForm in ``slot``; ``shown`` (slot or an element around it)
  // is visible while the form or its outcome is.
  function writeAnswerButton(item, slot, shown) {
    if (document.getElementById("insights").dataset.write !== "true") return "";  // the user's role may not
    const button = el("button", { type: "button", class: "small write" }, _("Write the answer"));
    button.addEventListener("click", () => {
      button.hidden = true;
      shown.hidden = false;
      slot.replaceChildren(answerForm(item.assistant_id, item.question, item.examples || [], (done) => {
        slot.replaceChildren(...(done ? [done] : []));
        shown.hidden = !done;
        button.hidden = Boolean(done);
      }));
      slot.querySelector("textarea[name=answer]").focus();
    });
    return button;
  }

  // ------------------------------------------------------------------ regression checks

  function initRegression() {
    const box = document.getElementById("regression");
    if (!box) return;
    const assistant = encodeURIComponent(box.dataset.assistant);
    const state = document.getElementById("run-state");
    const errorBox = document.getElementById("run-error");
    const runButton = document.getElementById("run-checks");

    async function follow(runId) {
      if (runButton) runButton.disabled = true;
      for (;;) {
        const run = await api("GET", `/api/regression-runs/${encodeURIComponent(runId)}`);
        if (run.status !== "running") break;
        state.textContent = _("running: %(done)s of %(total)s cases done…", { done: run.summary.done || 0, total: run.summary.total || 0 });
        await sleep(700);
      }
      location.href = `/dashboard/regression?assistant_id=${assistant}&run_id=${encodeURIComponent(runId)}`;
    }

    if (runButton) runButton.addEventListener("click", () => act(errorBox, runButton, async () => {
      state.textContent = _("starting…");
      try {
        const run = await api("POST", `/api/assistants/${assistant}/regression-runs`);
        await follow(run.id);
      } catch (e) {
        state.textContent = "";
        throw e;
      }
    }));
    const current = document.getElementById("run");
    if (current && current.dataset.status === "running") {
      follow(current.dataset.id).catch((e) => showError(errorBox, e.message));
    }

    box.addEventListener("click", async (ev) => {
      const button = ev.target.closest("#cases button[data-action=delete]");
      if (!button) return;
      const row = button.closest("tr");
      if (!confirm(_('Delete the case "%(question)s"?', { question: row.cells[0].textContent.trim() }))) return;
      if (await act(errorBox, button, () => api("DELETE", `/api/regression-cases/${encodeURIComponent(row.dataset.id)}`))) {
        await refreshFragment("cases");
      }
    });
    box.addEventListener("submit", async (ev) => {
      const form = ev.target;
      if (!form.classList.contains("facts-form")) return;
      ev.preventDefault();
      const url = `/api/regression-cases/${encodeURIComponent(form.closest("tr").dataset.id)}`;
      if (await act(errorBox, form, () => api("PATCH", url, { expected_facts: lines(form.elements.facts.value) }))) {
        await refreshFragment("cases");
      }
    });
  }

  // ------------------------------------------------------------------ knowledge base

  function initKnowledge() {
    const kb = document.getElementById("kb");
    if (!kb) return;
    const assistant = encodeURIComponent(kb.dataset.assistant);
    const messages = document.getElementById("upload-messages");
    let polling = false;

    async function poll() {
      if (polling) return;
      polling = true;
      try {
        let table = await refreshFragment("documents");
        while (table && table.dataset.busy === "true") {
          await sleep(700);
          table = await refreshFragment("documents");
        }
      } finally {
        polling = false;
      }
    }

    const upload = document.getElementById("upload");
    if (upload) upload.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = upload.querySelector("button");
      button.disabled = true;
      messages.replaceChildren();
      for (const file of Array.from(upload.elements.files.files)) {
        const data = new FormData();
        data.append("file", file, file.name);
        try {
          const doc = await api("POST", `/api/assistants/${assistant}/documents`, data);
          messages.append(el("li", { class: "ok" }, `${file.name}: ` + (doc.unchanged ? _("unchanged, nothing to do") : _("queued"))));
        } catch (e) {
          messages.append(el("li", { class: "error" }, e.message.includes(file.name) ? e.message : `${file.name}: ${e.message}`));
        }
      }
      upload.reset();
      button.disabled = false;
      await poll();
    });

    kb.addEventListener("click", async (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button) return;
      const row = button.closest("tr");
      const doc = encodeURIComponent(row.dataset.id);
      messages.replaceChildren();
      try {
        if (button.dataset.action === "delete") {
          if (!confirm(_("Delete %(file)s? Its passages leave the knowledge base at once.", { file: row.dataset.filename }))) return;
          button.disabled = true;
          await api("DELETE", `/api/documents/${doc}`);
        } else {
          button.disabled = true;
          await api("POST", `/api/documents/${doc}/reindex`);
        }
      } catch (e) {
        messages.append(el("li", { class: "error" }, `${row.dataset.filename}: ${e.message}`));
      }
      await poll();
    });

    const search = document.getElementById("search");
    const results = document.getElementById("search-results");
    const searchError = document.getElementById("search-error");
    search.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError(searchError, "");
      results.replaceChildren();
      try {
        const data = await api("POST", `/api/assistants/${assistant}/search`, {
          query: search.elements.query.value, top_k: Number(search.elements.top_k.value) || 5,
        });
        if (!data.results.length) results.append(el("li", { class: "muted" }, _("No passages found.")));
        for (const r of data.results) results.append(el("li", {}, sourceNode(r)));
      } catch (e) {
        showError(searchError, e.message);
      }
    });

    if (document.getElementById("documents").dataset.busy === "true") poll();
    initWebsites(assistant);
  }

  function initWebsites(assistant) {
    const messages = document.getElementById("website-messages");
    let polling = false;

    async function poll() {  // the sync's progress, until it is done; then the documents it changed
      if (polling) return;
      polling = true;
      try {
        let table = await refreshFragment("websites");
        while (table && table.dataset.busy === "true") {
          await sleep(1000);
          table = await refreshFragment("websites");
        }
        await refreshFragment("documents");
      } finally {
        polling = false;
      }
    }

    const form = document.getElementById("add-website");
    if (form) form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      messages.replaceChildren();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        await api("POST", `/api/assistants/${assistant}/websites`, {
          url: form.elements.url.value, kind: form.elements.kind.value,
          sync_interval_hours: Number(form.elements.sync_interval_hours.value),
        });
        messages.append(el("li", { class: "ok" }, `${form.elements.url.value}: ` + _("added, first sync queued")));
        form.reset();
      } catch (e) {
        messages.append(el("li", { class: "error" }, e.message));
      }
      button.disabled = false;
      await poll();
    });

    document.addEventListener("click", async (ev) => {
      const button = ev.target.closest("#websites button[data-action]");
      if (!button) return;
      const row = button.closest("tr");
      const id = encodeURIComponent(row.dataset.id);
      messages.replaceChildren();
      try {
        if (button.dataset.action === "delete") {
          if (!confirm(_("Delete %(url)s? Its pages leave the knowledge base at once.", { url: row.dataset.url }))) return;
          button.disabled = true;
          await api("DELETE", `/api/websites/${id}`);
        } else {
          button.disabled = true;
          await api("POST", `/api/websites/${id}/sync`);
        }
      } catch (e) {
        messages.append(el("li", { class: "error" }, `${row.dataset.url}: ${e.message}`));
      }
      await poll();
    });

    if (document.getElementById("websites").dataset.busy === "true") poll();
  }

  // ------------------------------------------------------------------ test console

  function parseVariables(text) {
    const out = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new Error(_('variables: "%(line)s" is not key=value', { line }));
      out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    return out;
  }

  function initConsole() {
    const box = document.getElementById("console");
    if (!box) return;
    const transcript = document.getElementById("transcript");
    const errorBox = document.getElementById("console-error");
    const link = document.getElementById("console-link");
    const form = document.getElementById("chat");

    function showReply(data) {
      const meta = `${TURN_STATUSES[data.status] || data.status} · ` +
        _("%(tokens_in)s in / %(tokens_out)s out tokens", { tokens_in: data.usage.prompt_tokens, tokens_out: data.usage.completion_tokens }) +
        ` · ${money(data.cost)}` + (data.timings.total_ms !== undefined ? ` · ${Math.round(data.timings.total_ms)} ms` : "");
      transcript.append(el("article", { class: "msg outbound" },
        el("header", {}, el("span", { class: "who" }, _("AI")), el("span", { class: "status" }, TURN_STATUSES[data.status] || data.status)),
        el("div", { class: "text" }, data.reply === null ? _("(no reply: the AI is paused for this conversation)") : data.reply),
        el("footer", { class: "meta" }, meta),
        (data.options || []).length ? el("div", { class: "choices" }, data.options.map(choiceButton)) : "",
        data.sources.length ? el("div", { class: "sources" }, el("h3", {}, _("Sources")), data.sources.map(sourceNode)) : "",
        data.function_calls.map(callNode)));
      link.hidden = false;
      link.querySelector("a").href = `/dashboard/conversations/${encodeURIComponent(data.conversation_id)}`;
    }

    // an option offered with a reply: its button sends the option's text as the customer's next message, as a tap would
    function choiceButton(option) {
      const button = el("button", { type: "button", class: "secondary" }, `${option.position}. ${option.title}`);
      button.addEventListener("click", () => {
        form.elements.message.value = option.title;
        form.requestSubmit();
      });
      return button;
    }

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      showError(errorBox, "");
      let variables;
      try { variables = parseVariables(form.elements.variables.value); } catch (e) { showError(errorBox, e.message); return; }
      const message = form.elements.message.value;
      transcript.append(el("article", { class: "msg inbound" },
        el("header", {}, el("span", { class: "who" }, form.elements.customer_id.value)), el("div", { class: "text" }, message)));
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        showReply(await api("POST", "/api/console/chat", {
          assistant_id: box.dataset.assistant, customer_id: form.elements.customer_id.value, message, variables,
        }));
        form.elements.message.value = "";
      } catch (e) {
        showError(errorBox, e.message);
      } finally {
        button.disabled = false;
        form.elements.message.focus();
      }
    });
  }

  // ------------------------------------------------------------------ improve

  function conversationLinks(ids) {
    return (ids || []).slice(0, 5).map((id, i) =>
      [i ? " " : "", el("a", { href: `/dashboard/conversations/${encodeURIComponent(id)}` }, `#${i + 1}`)]);
  }

  // GET /api/insights: {clusters: [{question, count, conversations, examples, conversation_ids, assistant_name}],
  //                     gaps: [{...the same, best_score (null: no sources), reasons}]}
  async function initImprove() {
    const box = document.getElementById("insights");
    if (!box) return;
    const state = document.getElementById("insights-state");
    let data;
    try {
      data = await api("GET", "/api/insights" + (box.dataset.query ? "?" + box.dataset.query : ""));
    } catch (e) {
      state.textContent = e.status === 404 ? _("Insights are not available on this server (no /api/insights).") : e.message;
      state.className = e.status === 404 ? "muted" : "error";
      return;
    }
    state.textContent = _("%(n)s questions considered.", { n: data.questions_considered });
    const clusters = document.getElementById("clusters");
    for (const c of data.clusters) {
      const slot = el("div", { class: "write-answer card", hidden: true });
      clusters.append(el("li", {},
        el("b", {}, c.question), " — " + _("asked %(count)s times in %(conversations)s conversation(s)",
          { count: c.count, conversations: c.conversations }) + ` · ${c.assistant_name} · `,
        conversationLinks(c.conversation_ids), " ", writeAnswerButton(c, slot, slot),
        el("ul", { class: "small muted" }, c.examples.map((q) => el("li", {}, q))), slot));
    }
    if (!data.clusters.length) clusters.append(el("li", { class: "muted" }, _("No repeated questions in this selection.")));
    document.getElementById("clusters-card").hidden = false;
    const gaps = document.querySelector("#gaps tbody");
    for (const g of data.gaps) {
      const reasons = Object.entries(g.reasons || {}).map(([k, n]) => `${k} ${n}`).join(", ");
      const slot = el("td", { colspan: "3", class: "write-answer" });
      const formRow = el("tr", { hidden: true }, slot);
      gaps.append(el("tr", { class: "gap" },
        el("td", {}, g.question, g.count > 1 ? el("span", { class: "muted small" }, " (" + _("%(count)s similar", { count: g.count }) + `; ${reasons})`) : ""),
        el("td", { class: "num" }, g.best_score === null ? _("no sources") : decimal(Number(g.best_score), 3)),
        el("td", {}, conversationLinks(g.conversation_ids), " ", writeAnswerButton(g, slot, formRow))),
      formRow);
    }
    if (!data.gaps.length) gaps.append(el("tr", {}, el("td", { colspan: "3", class: "muted" }, _("No gaps found."))));
    document.getElementById("gaps-card").hidden = false;
  }

  // ------------------------------------------------------------------ the waiting-for-a-human queue

  function initQueue() {
    const errorBox = document.getElementById("action-error");
    document.getElementById("queue").addEventListener("click", async (ev) => {
      const button = ev.target.closest("button[data-action]");
      const action = button && button.dataset.action;  // the API's route: handback or close
      if (action !== "handback" && action !== "close") return;
      const id = encodeURIComponent(button.closest("tr").dataset.id);
      const body = action === "handback" ? { reason: "an operator handed it back" } : undefined;
      if (await act(errorBox, button, () => api("POST", `/api/conversations/${id}/${action}`, body))) location.reload();
    });
  }

  const pages = { conversation: initConversation, queue: initQueue, knowledge: initKnowledge, console: initConsole,
    improve: initImprove, approved: initApproved, regression: initRegression };
  const init = pages[document.body.dataset.page];
  if (init) init();
})();
