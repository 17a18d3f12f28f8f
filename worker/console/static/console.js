// Conveyor console: refresh the live parts of a page. Every element with
// data-refresh="URL" is replaced by what URL answers, every data-every-s seconds
// (the server renders the HTML, escaped; nothing here builds markup from data).
"use strict";
(function () {
  function refresh(element) {
    const every = Math.max(1, Number(element.dataset.everyS || 5)) * 1000;
    let stopped = false;
    async function tick() {
      if (stopped) return;
      if (!document.hidden) {
        try {
          const response = await fetch(element.dataset.refresh, {
            credentials: "same-origin",
            headers: { Accept: "text/html" },
          });
          if (response.status === 401 || response.status === 403) {
            stopped = true;  // signed out elsewhere: the next page load asks to sign in
            element.setAttribute("data-stopped", String(response.status));
            return;
          }
          if (response.ok) {
            element.innerHTML = await response.text();
            element.setAttribute("data-refreshed", new Date().toISOString());
          }
        } catch (error) {
          element.setAttribute("data-error", String(error));
        }
      }
      setTimeout(tick, every);
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
})();
