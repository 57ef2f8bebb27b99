// Chiffon dashboard: live runs list and a run's live timeline (SSE). No build step.
"use strict";

(function () {
  const page = document.body.dataset.page;

  // -- the runs and agents lists: refresh the rows every 2 s while the tab is visible -------------
  function liveRuns(id) {
    const table = document.getElementById(id);
    if (!table) return;
    const body = table.querySelector("tbody");
    const url = table.dataset.live;
    async function refresh() {
      if (document.hidden) return;
      try {
        const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
        if (response.status === 401) { window.location.reload(); return; }
        if (response.ok) body.innerHTML = await response.text();
      } catch (_) { /* offline for a moment: next tick */ }
    }
    setInterval(refresh, 2000);
  }

  // -- a run: follow its events, append them to the timeline, refresh the panel -------
  const ENDINGS = new Set(["run.completed", "run.failed", "run.cancelled"]);

  function describe(type, p) {
    switch (type) {
      case "run.requested": return `${p.workflow} v${p.version}`;
      case "run.claimed": return `${p.resumed ? "resumed" : "running"} on ${p.executor} (pid ${p.pid})`;
      case "run.node.started": return `${p.node_id} (${p.node_type})${p.attempt > 1 ? " attempt " + p.attempt : ""}`;
      case "run.node.completed": return `${p.node_id} in ${Math.round(p.duration_ms)} ms`;
      case "run.node.failed": return `${p.node_id}: ${p.error.type}: ${p.error.message}${p.will_retry ? " (will retry)" : ""}`;
      case "run.llm.called": return `${p.node_id}: ${p.model}, ${p.prompt_tokens}+${p.completion_tokens} tokens, ${Math.round(p.latency_ms)} ms${p.ok ? "" : " — " + (p.error || "failed")}`;
      case "run.approval.requested": return `${p.node_id} waits for approval`;
      case "run.approval.decided": return `${p.node_id} ${p.approved ? "approved" : "rejected"}${p.comment ? ": " + p.comment : ""}`;
      case "run.completed": return `succeeded in ${Math.round(p.duration_ms)} ms`;
      case "run.failed": return `${p.error.type}: ${p.error.message}`;
      case "run.cancelled": return p.reason || "";
      case "run.cancel_requested": return p.reason || "";
      default: return p.node_id || p.reason || "";
    }
  }

  function liveRun() {
    const panel = document.getElementById("panel");
    if (!panel) return;
    const runId = panel.dataset.run;
    const timeline = document.getElementById("timeline");
    const live = document.getElementById("live");
    const types = JSON.parse(panel.dataset.types || "[]");
    let pending = null;
    let lastSeq = 0;

    async function refreshPanel(seq) {
      try {
        const response = await fetch(`/runs/${encodeURIComponent(runId)}/panel?min_position=${seq}`,
          { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
        if (response.status === 401) { window.location.reload(); return; }
        if (!response.ok) return;
        const fresh = document.createElement("template");
        fresh.innerHTML = await response.text();
        const focused = panel.contains(document.activeElement) ? document.activeElement : null;
        keepApprovalBoxes(fresh.content);
        panel.replaceChildren(fresh.content);
        if (focused && panel.contains(focused)) focused.focus();
        const status = panel.querySelector("[data-status]");
        if (status && ["succeeded", "failed", "cancelled"].includes(status.dataset.status)) {
          const cancel = document.getElementById("cancel-form");
          if (cancel) cancel.remove();
        }
      } catch (_) { /* the next event refreshes again */ }
    }

    // A refresh must not touch an approval box still waiting: the person may be typing a
    // comment into it or clicking its button right now. The box already on the page is
    // kept, element and all, in place of the refreshed copy of it.
    function keepApprovalBoxes(fragment) {
      fragment.querySelectorAll(".approval[data-node]").forEach((incoming) => {
        const current = panel.querySelector(
          `.approval[data-node="${CSS.escape(incoming.dataset.node)}"]`);
        if (current) incoming.replaceWith(current);
      });
    }

    function schedule(seq) {
      lastSeq = Math.max(lastSeq, seq);
      if (pending) return;
      pending = setTimeout(() => { pending = null; refreshPanel(lastSeq); }, 150);
    }

    function append(event) {
      let envelope;
      try { envelope = JSON.parse(event.data); } catch (_) { return; }
      const row = document.createElement("tr");
      row.className = "fresh";
      row.dataset.type = envelope.type;
      const cells = [event.lastEventId, (envelope.occurred_at || "").replace("T", " ").slice(0, 23),
        envelope.type, `${envelope.actor.kind}:${envelope.actor.name || envelope.actor.id}`, describe(envelope.type, envelope.payload || {})];
      cells.forEach((text, i) => {
        const cell = document.createElement("td");
        if (i === 0) cell.className = "num";
        if (i === 2) { const code = document.createElement("code"); code.textContent = text; cell.appendChild(code); }
        else cell.textContent = text;
        row.appendChild(cell);
      });
      timeline.appendChild(row);
    }

    const source = new EventSource(`/v1/runs/${encodeURIComponent(runId)}/events`);
    source.onopen = () => { if (live) live.hidden = false; };
    source.onerror = () => { if (live) live.hidden = true; };
    for (const type of types) {
      source.addEventListener(type, (event) => {
        append(event);
        schedule(Number(event.lastEventId) || 0);
        if (ENDINGS.has(type)) {
          source.close();  // the server ends the stream; do not let EventSource reconnect
          if (live) live.hidden = true;
        }
      });
    }
  }

  if (page === "runs") liveRuns("runs");
  if (page === "agents") liveRuns("agents");
  if (page === "run") liveRun();
})();
