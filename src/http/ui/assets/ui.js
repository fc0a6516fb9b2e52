// auditlake's web view: a little behaviour on server-rendered pages. The
// pages work without it; it adds local times, copying, and drag-to-zoom.
"use strict";

(function () {
  var LOCAL = "auditlake.localTimes";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function showTimes(local) {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      if (!el.dataset.utc) { el.dataset.utc = el.textContent; }
      if (!local) { el.textContent = el.dataset.utc; return; }
      var t = new Date(el.getAttribute("datetime"));
      var offset = -t.getTimezoneOffset();
      var sign = offset >= 0 ? "+" : "-";
      offset = Math.abs(offset);
      el.textContent = t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " +
        pad(t.getHours()) + ":" + pad(t.getMinutes()) + ":" + pad(t.getSeconds()) +
        " UTC" + sign + pad(Math.floor(offset / 60)) + ":" + pad(offset % 60);
    });
    document.querySelectorAll("button.times").forEach(function (button) {
      button.setAttribute("aria-pressed", local ? "true" : "false");
      button.textContent = local ? "Show UTC times" : "Show local times";
    });
  }

  function rfc3339(us) { return new Date(Math.round(us / 1000)).toISOString().replace(/\.\d{3}Z$/, "Z"); }

  // Drag across the histogram to search the dragged span.
  function zoomable(svg) {
    var from = Number(svg.dataset.fromUs), to = Number(svg.dataset.toUs), start = null, band = null;
    function at(event) {
      var box = svg.getBoundingClientRect();
      return Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
    }
    svg.addEventListener("mousedown", function (event) {
      start = at(event);
      band = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      band.setAttribute("class", "selection");
      band.setAttribute("y", "0");
      band.setAttribute("height", "100");
      svg.appendChild(band);
      event.preventDefault();
    });
    svg.addEventListener("mousemove", function (event) {
      if (start === null) { return; }
      var now = at(event);
      band.setAttribute("x", String(Math.min(start, now) * 960));
      band.setAttribute("width", String(Math.abs(now - start) * 960));
    });
    window.addEventListener("mouseup", function (event) {
      if (start === null) { return; }
      var end = at(event), a = Math.min(start, end), b = Math.max(start, end);
      start = null;
      if (band) { band.remove(); band = null; }
      if (b - a < 0.01) { // a click: its bar's span
        var buckets = Number(svg.dataset.buckets), bar = Math.min(buckets - 1, Math.floor(a * buckets));
        a = bar / buckets;
        b = (bar + 1) / buckets;
      }
      var span = to - from, q = document.getElementById("q");
      var kept = (q ? q.value : "").split(/\s+/).filter(function (t) {
        return t && t.toLowerCase().indexOf("created:") !== 0;
      });
      kept.push("created:" + rfc3339(from + a * span) + ".." + rfc3339(from + b * span));
      var url = new URL(svg.dataset.path, window.location.href);
      new URLSearchParams(window.location.search).forEach(function (value, name) {
        if (name !== "q" && name !== "before" && name !== "after") { url.searchParams.set(name, value); }
      });
      url.searchParams.set("q", kept.join(" "));
      window.location.assign(url.toString());
    });
  }

  // The embedded viewer tells the page that frames it when its token
  // expired (the message holds nothing but the time), and says so itself.
  function tellExpired(at) {
    if (window.parent !== window) {
      window.parent.postMessage({ type: "auditlake.viewer.expired", expires_at: at }, "*");
    }
  }

  function watchExpiry(viewer) {
    var at = viewer.dataset.expiresAt;
    window.setTimeout(function () {
      var main = document.getElementById("main");
      var note = document.createElement("p");
      note.className = "error";
      note.setAttribute("role", "alert");
      note.id = "viewer-expired-note";
      note.textContent = "This view expired at " + at + ". Reload the page to get a new one.";
      while (main.firstChild) { main.removeChild(main.firstChild); }
      main.appendChild(note);
      tellExpired(at);
    }, Math.max(0, Number(viewer.dataset.expiresMs) - Date.now()));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var expired = document.getElementById("viewer-expired");
    if (expired) { tellExpired(expired.dataset.expiresAt); }
    var viewer = document.getElementById("viewer");
    if (viewer) { watchExpiry(viewer); }
    var local = false;
    try { local = window.localStorage.getItem(LOCAL) === "1"; } catch (e) { local = false; }
    showTimes(local);
    document.querySelectorAll("button.times").forEach(function (button) {
      button.addEventListener("click", function () {
        local = !local;
        try { window.localStorage.setItem(LOCAL, local ? "1" : "0"); } catch (e) { /* private mode */ }
        showTimes(local);
      });
    });
    document.querySelectorAll("button.copy").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.dataset.copy);
        if (!source || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(source.textContent).then(function () { button.textContent = "Copied"; });
      });
    });
    document.querySelectorAll(".histogram svg[data-from-us]").forEach(zoomable);
    // A saved query runs while its page loads: Cancel stops the load, and
    // the server stops the query when its request goes away.
    document.querySelectorAll("form.saved").forEach(function (form) {
      form.addEventListener("submit", function () {
        if (form.querySelector("button.cancel")) { return; }
        var status = document.createElement("span");
        status.setAttribute("role", "status");
        status.textContent = " Running… ";
        var cancel = document.createElement("button");
        cancel.type = "button";
        cancel.className = "cancel";
        cancel.textContent = "Cancel";
        cancel.addEventListener("click", function () {
          window.stop();
          status.textContent = " Cancelled. ";
          cancel.remove();
        });
        var run = form.querySelector("button[type=submit]");
        run.after(status, cancel);
      });
    });
  });
})();
