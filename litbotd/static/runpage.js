// litbotd run page: live log (server-sent events), earlier lines on demand, line links.
// Lines arrive as data ([css classes, text] segments) and are put on the page with textContent:
// nothing from a log ever becomes markup.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  var log = document.getElementById("log");
  if (!log) return;

  function lineEl(n, segs) {
    var row = document.createElement("span");
    row.className = "ln"; row.id = "L" + n;
    var a = document.createElement("a");
    a.className = "n"; a.href = "#L" + n; a.textContent = String(n);
    row.appendChild(a);
    for (var i = 0; i < segs.length; i++) {
      var cls = segs[i][0], text = segs[i][1];
      if (cls) { var s = document.createElement("span"); s.className = cls; s.textContent = text; row.appendChild(s); }
      else row.appendChild(document.createTextNode(text));
    }
    row.appendChild(document.createTextNode("\n"));
    return row;
  }

  // Earlier lines: fetched as JSON and put above, without a reload.
  var earlier = document.getElementById("earlier");
  if (earlier) {
    earlier.addEventListener("click", function (ev) {
      ev.preventDefault();
      var from = parseInt(earlier.dataset.from, 10), to = parseInt(earlier.dataset.to, 10);
      fetch("lines?from=" + from + "&to=" + to, {credentials: "same-origin"}).then(function (r) {
        if (!r.ok) throw new Error(r.status); return r.json();
      }).then(function (data) {
        var frag = document.createDocumentFragment();
        data.lines.forEach(function (l, i) { frag.appendChild(lineEl(data.first + i, l)); });
        log.insertBefore(frag, log.firstChild);
        log.dataset.first = String(data.first);
        if (data.first > 1) {
          var prev = Math.max(1, data.first - (to - from));
          earlier.dataset.from = String(prev); earlier.dataset.to = String(data.first);
          earlier.textContent = "show lines " + prev + "\u2013" + (data.first - 1);
          earlier.href = "?from=" + prev;
        } else {
          earlier.parentNode.removeChild(earlier);
        }
      }).catch(function () { window.location.href = earlier.href; });
    });
  }

  // A #L123 that is not on the page: load the part of the log around it.
  function goToLine() {
    var m = /^#L(\d+)$/.exec(window.location.hash);
    if (!m) return;
    if (!document.getElementById("L" + m[1])) {
      var from = Math.max(1, parseInt(m[1], 10) - 50);
      window.location.replace("?from=" + from + "#L" + m[1]);
    }
  }
  window.addEventListener("hashchange", goToLine);
  goToLine();

  // Live: new lines from the server while the job runs.
  var events = log.dataset.events;
  if (!events || !window.EventSource) return;
  var follow = document.getElementById("follow"), live = document.getElementById("live");
  var src = new EventSource(events);
  src.addEventListener("lines", function (ev) {
    var data = JSON.parse(ev.data);
    var frag = document.createDocumentFragment();
    data.lines.forEach(function (l, i) { frag.appendChild(lineEl(data.first + i, l)); });
    log.appendChild(frag);
    if (follow && follow.checked) window.scrollTo(0, document.body.scrollHeight);
  });
  src.addEventListener("end", function (ev) {
    var data = JSON.parse(ev.data);
    src.close();
    var status = document.getElementById("status");
    if (status) { status.textContent = data.status_text; status.className = "badge " + data.badge; }
    if (live) live.textContent = "The run has finished. Reload the page for its annotations and test counts.";
  });
  src.onerror = function () { if (live) live.textContent = "reconnecting…"; };
  src.onopen = function () { if (live) live.textContent = "following the log…"; };
})();
