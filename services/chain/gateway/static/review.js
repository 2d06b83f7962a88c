// The review page's script: a client of the researcher API, like any app (see services/chain/gateway/review.py).
"use strict";
(() => {
  const TOKEN_KEY = "whaleid-review-token";
  const REFILL_BELOW = 5;
  const $ = (id) => document.getElementById(id);
  let token = null;
  let queue = [];          // items fetched, not shown yet (most uncertain first)
  let current = null;      // the item on screen
  let selected = 0;        // index of the selected candidate
  let total = 0;            // awaiting review at the last fetch
  let sinceFetch = 0;       // decisions made since
  let filters = new URLSearchParams();
  const done = new Set();  // decided or skipped in this tab: not shown again until the filters change
  let loading = null;

  function say(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  function takeToken() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);  // the token leaves the address bar
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    $("review").hidden = true;
    $("empty").hidden = true;
    $("sign-out").hidden = true;
    $("similar-open").hidden = true;
    $("sign-in").hidden = false;
    document.body.dataset.state = "signed-out";
    if (reason) say(reason, true);
  }

  async function api(method, path, body) {
    const options = { method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (response.status === 401 || response.status === 403) {
      signOut("Sign-in refused: " + (data.error || response.status) + " (a researcher token is needed)");
      throw new Error("unauthorized");
    }
    return { status: response.status, data };
  }

  function fetchQueue() {
    if (!loading) {
      const params = new URLSearchParams(filters);
      params.set("limit", "50");
      loading = api("GET", "/v1/review/queue?" + params).then(({ status, data }) => {
        if (status !== 200) throw new Error(data.error || "queue: HTTP " + status);
        const fetched = Date.now();
        total = data.total;
        sinceFetch = 0;
        queue = data.items.filter((item) => !done.has(item.sighting_id)
          && !(current && item.sighting_id === current.sighting_id));
        queue.forEach((item) => { item.fetched = fetched; if (item.photo_url) new Image().src = item.photo_url; });
        if (current) { renderUpcoming(); renderCount(); }
      }).finally(() => { loading = null; });
    }
    return loading;
  }

  function text(tag, value, className) {
    const node = document.createElement(tag);
    node.textContent = value;
    if (className) node.className = className;
    return node;
  }

  function drawCrop() {
    const img = $("photo"), box = current && current.crop_box, crop = $("crop");
    if (!box || !img.naturalWidth) { crop.hidden = true; return; }
    const scale = img.clientWidth / img.naturalWidth;
    crop.style.left = box[0] * scale + "px";
    crop.style.top = box[1] * scale + "px";
    crop.style.width = (box[2] - box[0]) * scale + "px";
    crop.style.height = (box[3] - box[1]) * scale + "px";
    crop.hidden = false;
  }

  function select(index) {
    const rows = $("candidates").tBodies[0].rows;
    if (index < 0 || index >= rows.length || current.candidates[index].new_individual) return;
    selected = index;
    Array.from(rows).forEach((row, n) => row.classList.toggle("selected", n === index));
    const cand = current.candidates[index], photos = cand.reference_photos || [];
    $("reference-photo").hidden = !photos.length;
    if (photos.length) $("reference-photo").src = photos[0];
    else $("reference-photo").removeAttribute("src");
    $("reference-caption").textContent = photos.length
      ? "reference of " + cand.individual_id + " (newest of " + photos.length + " shown)"
      : "no reference photo of " + cand.individual_id + " in the served gallery";
  }

  function renderCandidates() {
    const body = $("candidates").tBodies[0];
    body.replaceChildren();
    current.candidates.forEach((cand, n) => {
      const row = document.createElement("tr");
      row.dataset.individualId = cand.individual_id;
      if (cand.new_individual) row.classList.add("new-individual");
      if (cand.above_threshold) row.classList.add("above");
      row.append(text("td", String(n + 1)));
      const idCell = text("td", cand.new_individual ? "new individual (threshold)" : cand.individual_id);
      if (!cand.new_individual) {
        const open = text("button", "sightings", "link");
        open.type = "button";
        open.title = "photos and sightings of " + cand.individual_id + " (i)";
        open.addEventListener("click", (event) => { event.stopPropagation(); showIndividual(cand.individual_id); });
        idCell.append(open);
      }
      row.append(idCell);
      row.append(text("td", cand.score.toFixed(3), "score"));
      const barCell = document.createElement("td");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.max(0, Math.min(1, cand.score)) * 120 + "px";
      barCell.append(bar);
      row.append(barCell);
      const thumb = document.createElement("td");
      thumb.className = "thumb";
      (cand.reference_photos || []).slice(0, 1).forEach((src) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = "reference of " + cand.individual_id;
        thumb.append(img);
      });
      row.append(thumb);
      row.addEventListener("click", () => select(n));
      body.append(row);
    });
    const first = current.candidates.findIndex((c) => !c.new_individual);
    selected = -1;
    $("reference-photo").hidden = true;
    $("reference-caption").textContent = "";
    if (first >= 0) select(first);
  }

  function renderFacts() {
    const m = current.metadata || {};
    const facts = [["sighting", current.sighting_id], ["species", current.species || "unknown"],
      ["observer", m.observer || ""], ["taken", m.taken_at || ""],
      ["position", m.latitude == null ? "" : m.latitude + ", " + m.longitude],
      ["threshold", current.threshold == null ? "" : current.threshold.toFixed(3)],
      ["margin", current.margin == null ? "" : current.margin.toFixed(3)],
      ["gallery", current.gallery_version || ""]];
    if (current.encounter) facts.unshift(["encounter", current.encounter.id + " \u00b7 " + current.encounter.sightings.length + " photo(s), pooled"]);
    $("facts").replaceChildren(...facts.flatMap(([k, v]) => [text("dt", k), text("dd", String(v))]));
  }

  async function next() {
    current = null;
    if (!queue.length) {
      try { await fetchQueue(); } catch (e) { if (e.message !== "unauthorized") say(e.message, true); return; }
    }
    current = queue.shift() || null;
    if (current && Date.now() - current.fetched > (current.photo_expires_in - 30) * 1000) {
      queue.unshift(current);  // its photo URL is about to expire: fetch fresh ones
      queue = [];
      return next();
    }
    show();
    if (queue.length < REFILL_BELOW) fetchQueue().catch(() => {});
  }

  function describe(item) {
    const margin = item.margin == null ? "" : "margin " + item.margin.toFixed(3);
    const top = item.candidates.find((c) => !c.new_individual);
    return [item.sighting_id.slice(0, 10), [item.species, top ? top.individual_id : "", margin].join(" \u00b7 ")];
  }

  function renderUpcoming() {
    const items = (current ? [current] : []).concat(queue.slice(0, 9));
    $("upcoming").replaceChildren(...items.map((item, n) => {
      const [title, detail] = describe(item);
      const li = text("li", title, n === 0 && current ? "current" : "");
      li.dataset.sightingId = item.sighting_id;
      li.append(text("small", detail));
      if (n > 0 || !current) li.addEventListener("click", () => jump(item.sighting_id));
      return li;
    }));
  }

  function jump(sightingId) {
    const index = queue.findIndex((item) => item.sighting_id === sightingId);
    if (index < 0) return;
    const [item] = queue.splice(index, 1);
    if (current) queue.unshift(current);
    current = item;
    show();
  }

  function renderCount() {
    $("count").textContent = Math.max(total - sinceFetch, current ? 1 : 0) + " awaiting review";
  }

  function show() {
    $("sign-in").hidden = true;
    $("sign-out").hidden = false;
    $("similar-open").hidden = false;
    if (!current) {
      $("review").hidden = true;
      $("empty").hidden = false;
      $("count").textContent = "0 awaiting review";
      document.body.dataset.state = "empty";
      return;
    }
    $("empty").hidden = true;
    $("review").hidden = false;
    $("review").dataset.sightingId = current.sighting_id;
    renderCount();
    $("crop").hidden = true;
    $("photo").src = current.photo_url || "";
    $("caption").textContent = current.crop_box
      ? "crop box (" + current.crop_source + "): " + current.crop_box.map((v) => Math.round(v)).join(", ")
      : "no crop box";
    renderFacts();
    renderEncounter();
    renderCandidates();
    renderUpcoming();
    $("another-id").value = "";
    document.body.dataset.state = "ready";
  }

  function renderEncounter() {
    const strip = $("encounter-photos");
    const others = current.encounter ? current.encounter.photos.filter((p) => p.sighting_id !== current.sighting_id) : [];
    strip.replaceChildren(...others.filter((p) => p.photo_url).map((p) => image(p.photo_url, "encounter photo " + p.sighting_id)));
    strip.hidden = others.length === 0;
  }

  async function confirmOne(sightingId, body) {
    return api("POST", "/v1/sightings/" + encodeURIComponent(sightingId) + "/confirmation", body);
  }

  async function decide(body, what) {
    if (!current || document.body.dataset.state === "busy") return;
    const item = current;
    document.body.dataset.state = "busy";
    // An encounter is one animal: the same decision for each of its photos (a new individual is created by the
    // first and confirmed into by the others; a rejection names the pooled top candidate).
    const members = item.encounter ? item.encounter.sightings : [item.sighting_id];
    let answer, conf;
    try {
      for (const [n, sightingId] of members.entries()) {
        let each = body;
        if (n > 0 && body.action === "new") each = {action: "confirm", individual_id: conf.individual_id};
        else if (body.action === "reject" && !body.individual_id && members.length > 1) {
          const top = item.candidates.find((c) => !c.new_individual);
          each = top ? {action: "reject", individual_id: top.individual_id} : body;
        }
        answer = await confirmOne(sightingId, each);
        if (answer.status !== 200 && answer.status !== 201) break;
        if (n === 0) conf = answer.data.confirmation;
        done.add(sightingId);
      }
    } catch (e) {
      if (e.message !== "unauthorized") { say("Network error: " + e.message, true); document.body.dataset.state = "ready"; }
      return;
    }
    if (answer.status === 200 || answer.status === 201) {
      sinceFetch += 1;
      const where = members.length > 1 ? "encounter " + item.encounter.id + " (" + members.length + " photos)"
        : "sighting " + item.sighting_id;
      say(what + ": " + where + " \u2192 " + conf.action + " " + conf.individual_id);
      await next();
    } else {
      say("Refused (" + (answer.data.code || answer.status) + "): " + (answer.data.error || ""), true);
      document.body.dataset.state = "ready";
    }
  }

  function confirmSelected() {
    if (!current || selected < 0) return;
    const id = current.candidates[selected].individual_id;
    decide({ action: "confirm", individual_id: id }, "Confirmed " + id);
  }

  function reject() {
    if (!current) return;
    const top = current.candidates.find((c) => !c.new_individual);
    decide(top ? { action: "reject", individual_id: top.individual_id } : { action: "reject" }, "Rejected");
  }

  function newIndividual() {
    if (!current) return;
    const above = current.candidates.filter((c) => c.above_threshold);
    if (!above.length) { decide({ action: "new" }, "New individual"); return; }
    // the duplicate guard: an existing individual scores above its threshold
    $("guard-text").textContent = above.map((c) => c.individual_id + " scores " + c.score.toFixed(3)).join(", ")
      + ", above the threshold " + (current.threshold == null ? "" : current.threshold.toFixed(3))
      + ". This may be a known individual; creating a new one would make a duplicate.";
    $("duplicate-guard").returnValue = "";
    $("duplicate-guard").showModal();
  }

  function skip() {
    if (!current) return;
    done.add(current.sighting_id);
    say("Skipped " + current.sighting_id);
    next();
  }

  function image(src, alt) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    return img;
  }

  function drawMap(sightings) {  // positions on a plain lat/lon plot: no map tiles offline
    const points = sightings.filter((s) => s.metadata.latitude != null && s.metadata.longitude != null)
      .map((s) => [s.metadata.longitude, s.metadata.latitude]);
    const holder = $("individual-map");
    holder.replaceChildren();
    if (!points.length) return;
    const NS = "http://www.w3.org/2000/svg", W = 360, H = 200, PAD = 14;
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs) - 0.05, x1 = Math.max(...xs) + 0.05, y0 = Math.min(...ys) - 0.05, y1 = Math.max(...ys) + 0.05;
    const sx = (x) => PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD), sy = (y) => H - PAD - (y - y0) / (y1 - y0) * (H - 2 * PAD);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2e86c1");
    svg.append(line);
    points.forEach((p, n) => {
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", sx(p[0]));
      dot.setAttribute("cy", sy(p[1]));
      dot.setAttribute("r", 5);
      dot.setAttribute("fill", n === points.length - 1 ? "#b03a2e" : "#12355b");
      svg.append(dot);
    });
    holder.append(svg, text("p", "positions, oldest to newest (lon " + x0.toFixed(2) + "\u2026" + x1.toFixed(2)
      + ", lat " + y0.toFixed(2) + "\u2026" + y1.toFixed(2) + ")", "hint"));
  }

  let shownIndividual = null;  // the individual page on screen: {individual_id, sightings, ...}

  function when(seconds) {
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 16) + "Z";
  }

  function curationSay(message, error) {
    $("curation-status").textContent = message;
    $("curation-status").className = error ? "error" : "";
  }

  function renderMerges(operations) {
    $("individual-merges").replaceChildren(...(operations.length ? operations.map((op) => {
      const li = text("li", op.kind + " " + op.source + " \u2192 " + op.target + " by " + op.researcher + ", "
        + when(op.at) + (op.undone ? " (undone by " + op.undone_by + ")" : ""), op.undone ? "undone" : "");
      li.dataset.mergeId = op.merge_id;
      if (!op.undone) {
        const undo = text("button", "Undo");
        undo.type = "button";
        undo.className = "undo";
        undo.title = "restore " + op.source + " and " + op.target + " as before";
        undo.addEventListener("click", () => undoMerge(op));
        li.append(undo);
      }
      return li;
    }) : [text("li", "none", "hint")]));
  }

  async function showIndividual(individualId, message) {
    const { status, data } = await api("GET", "/v1/individuals/" + encodeURIComponent(individualId));
    if (status !== 200) { say("Individual " + individualId + ": " + (data.error || status), true); return; }
    const id = data.individual_id;
    shownIndividual = data;
    $("individual").dataset.individualId = id;
    $("individual-title").textContent = id + (data.in_gallery
      ? " \u2014 in gallery " + data.gallery_version : " \u2014 not in the served gallery yet");
    const merged = data.merged_from || [];
    $("individual-aliases").textContent = (data.requested_id && data.requested_id !== id
      ? data.requested_id + " was merged or renamed into " + id + ". " : "")
      + (merged.length ? "Also recorded as: " + merged.join(", ") + "." : "");
    $("individual-gallery").replaceChildren(...(data.gallery_photos.length
      ? data.gallery_photos.map((src) => image(src, "gallery photo of " + id))
      : [text("span", "no gallery photo in S3", "hint")]));
    $("individual-timeline").replaceChildren(...data.sightings.map((s) => {
      const li = document.createElement("li");
      li.dataset.sightingId = s.sighting_id;
      if (s.photo_url) li.append(image(s.photo_url, "sighting " + s.sighting_id));
      const m = s.metadata || {};
      li.append(text("span", [m.taken_at || "?", m.latitude == null ? "" : m.latitude + ", " + m.longitude,
        s.action + " by " + s.researcher, s.sighting_id.slice(0, 10)].join(" \u00b7 ")
        + (s.recorded_as && s.recorded_as !== id ? " (recorded as " + s.recorded_as + ")" : "")));
      return li;
    }));
    drawMap(data.sightings);
    $("merge-target").value = "";
    $("rename-id").value = "";
    curationSay(message || "", false);
    const log = await api("GET", "/v1/merges?limit=10&individual=" + encodeURIComponent(id));
    renderMerges(log.status === 200 ? log.data.operations : []);
    if (!$("individual").open) $("individual").showModal();
    $("individual").dataset.state = "ready";
  }

  function askMerge(event) {
    event.preventDefault();
    const source = shownIndividual && shownIndividual.individual_id, target = $("merge-target").value.trim();
    if (!source) return;
    if (!target || target === source) { curationSay("Choose another individual to merge " + source + " into", true); return; }
    $("merge-text").textContent = "Merge " + source + " into " + target + "? " + source + " and its "
      + shownIndividual.sightings.length + " confirmed sighting(s) will count as " + target
      + " from now on, and the next gallery version (whaleid reindex) holds its photos under " + target
      + ". It can be undone.";
    $("merge-confirm").dataset.source = source;
    $("merge-confirm").dataset.target = target;
    $("merge-confirm").returnValue = "";
    $("merge-confirm").showModal();
  }

  async function doMerge() {
    if ($("merge-confirm").returnValue !== "merge") return;
    const { source, target } = $("merge-confirm").dataset;
    $("individual").dataset.state = "busy";
    const { status, data } = await api("POST", "/v1/individuals/" + encodeURIComponent(source) + "/merge",
      { into: target });
    if (status !== 201) {
      $("individual").dataset.state = "ready";
      curationSay("Merge refused (" + (data.code || status) + "): " + (data.error || ""), true);
      return;
    }
    const op = data.operation;
    say("Merged " + op.source + " into " + op.target + " (" + op.merge_id + ")");
    await showIndividual(op.target, "Merged " + op.source + " into " + op.target + " (" + op.merge_id
      + "); run whaleid reindex to publish the gallery with it.");
  }

  async function rename(event) {
    event.preventDefault();
    const source = shownIndividual && shownIndividual.individual_id, name = $("rename-id").value.trim();
    if (!source || !name) return;
    $("individual").dataset.state = "busy";
    const { status, data } = await api("POST", "/v1/individuals/" + encodeURIComponent(source) + "/rename",
      { new_id: name });
    if (status !== 201) {
      $("individual").dataset.state = "ready";
      curationSay("Rename refused (" + (data.code || status) + "): " + (data.error || ""), true);
      return;
    }
    say("Renamed " + source + " to " + name);
    await showIndividual(name, "Renamed " + source + " to " + name + " (" + data.operation.merge_id + ")");
  }

  async function undoMerge(op) {
    $("individual").dataset.state = "busy";
    const { status, data } = await api("POST", "/v1/merges/" + encodeURIComponent(op.merge_id) + "/undo");
    if (status !== 200) {
      $("individual").dataset.state = "ready";
      curationSay("Undo refused (" + (data.code || status) + "): " + (data.error || ""), true);
      return;
    }
    say("Undid " + op.kind + " " + op.source + " \u2192 " + op.target);
    await showIndividual(op.kind === "rename" ? op.source : shownIndividual.individual_id,
      "Undid " + op.kind + " " + op.source + " \u2192 " + op.target + ": both ids are back");
  }

  let mergeTimer = null;
  function searchTargets() {
    clearTimeout(mergeTimer);
    mergeTimer = setTimeout(async () => {
      const q = $("merge-target").value.trim(), self = shownIndividual && shownIndividual.individual_id;
      const { status, data } = await api("GET", "/v1/individuals?q=" + encodeURIComponent(q));
      if (status !== 200) return;
      $("merge-ids").replaceChildren(...data.individuals.filter((id) => id !== self).map((id) => {
        const option = document.createElement("option");
        option.value = id;
        return option;
      }));
    }, 150);
  }

  async function showSimilar() {
    const { status, data } = await api("GET", "/v1/individuals/similar");
    if (status !== 200) { say("Similar individuals: " + (data.error || status), true); return; }
    $("similar-text").textContent = data.total + " pair(s) of individuals in gallery " + data.gallery_version
      + " whose mean embeddings score at or above their new-individual threshold (global "
      + data.threshold.toFixed(3) + "): maybe one animal catalogued twice. Open one to merge.";
    $("similar-pairs").tBodies[0].replaceChildren(...data.pairs.map((pair) => {
      const row = document.createElement("tr");
      row.dataset.pair = pair.a + " " + pair.b;
      [pair.a, pair.b].forEach((id) => {
        const cell = document.createElement("td");
        const open = text("button", id, "link");
        open.type = "button";
        open.dataset.individualId = id;
        open.addEventListener("click", () => { $("similar").close(); showIndividual(id); });
        cell.append(open);
        row.append(cell);
      });
      row.append(text("td", pair.score.toFixed(3)), text("td", pair.threshold.toFixed(3)));
      return row;
    }));
    $("similar").showModal();
  }

  let searchTimer = null;
  function searchIndividuals() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(async () => {
      const q = $("another-id").value.trim();
      const { status, data } = await api("GET", "/v1/individuals?q=" + encodeURIComponent(q));
      if (status !== 200) return;
      $("individual-ids").replaceChildren(...data.individuals.map((id) => {
        const option = document.createElement("option");
        option.value = id;
        return option;
      }));
    }, 150);
  }

  function typing(event) {
    const tag = event.target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || $("duplicate-guard").open
      || $("individual").open || $("merge-confirm").open || $("similar").open;
  }

  function onKey(event) {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey || !current) return;
    const key = event.key.toLowerCase();
    if (key >= "1" && key <= "5") select(Number(key) - 1);
    else if (key === "c" || key === "enter") confirmSelected();
    else if (key === "r") reject();
    else if (key === "n") newIndividual();
    else if (key === "s") skip();
    else if (key === "i" && selected >= 0) showIndividual(current.candidates[selected].individual_id);
    else if (key === "a") { $("another-id").focus(); searchIndividuals(); }
    else return;
    event.preventDefault();
  }

  function filtersFromAddress() {  // /review?species=...&observer=... prefills the filters (bookmarkable)
    const form = $("filters");
    for (const [k, v] of new URLSearchParams(location.search)) {
      if (form.elements[k] && v.trim()) { form.elements[k].value = v.trim(); filters.set(k, v.trim()); }
    }
  }

  async function start() {
    token = takeToken();
    if (!token) { signOut(); return; }
    say("");
    queue = [];
    await next();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("photo").addEventListener("load", drawCrop);
    $("photo").addEventListener("error", () => { if (current && current.photo_url) say("The photo could not be loaded (expired or missing)", true); });
    window.addEventListener("resize", drawCrop);
    $("confirm").addEventListener("click", confirmSelected);
    $("reject").addEventListener("click", reject);
    $("new").addEventListener("click", newIndividual);
    $("skip").addEventListener("click", skip);
    $("another-id").addEventListener("input", searchIndividuals);
    $("another").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = $("another-id").value.trim();
      if (id) decide({ action: "confirm", individual_id: id }, "Confirmed " + id);
    });
    $("duplicate-guard").addEventListener("close", () => {
      if ($("duplicate-guard").returnValue === "create") decide({ action: "new" }, "New individual (despite the guard)");
    });
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      filters = new URLSearchParams();
      for (const [k, v] of new FormData($("filters"))) if (String(v).trim()) filters.set(k, String(v).trim());
      done.clear();
      queue = [];
      current = null;
      next();
    });
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      start();
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out"));
    $("merge-form").addEventListener("submit", askMerge);
    $("merge-target").addEventListener("input", searchTargets);
    $("merge-target").addEventListener("focus", searchTargets);
    $("merge-confirm").addEventListener("close", doMerge);
    $("rename-form").addEventListener("submit", rename);
    $("similar-open").addEventListener("click", showSimilar);
    document.addEventListener("keydown", onKey);
    filtersFromAddress();
    start();
  });
})();
