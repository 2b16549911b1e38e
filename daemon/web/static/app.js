// scanrelay page: refresh the parts marked data-live without reloading the page.
// An element <div data-live="/url" data-every="1000"> gets the HTML fragment at /url
// every data-every ms; it stops once the fragment holds an element with data-final
// (a run that ended). Fragments are rendered and escaped by the server.
"use strict";

function follow(element) {
  const url = element.dataset.live;
  const every = Number(element.dataset.every || 1000);
  async function tick() {
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
        return;
      }
      if (response.ok) {
        element.innerHTML = await response.text();
        element.dataset.updated = String(Date.now());
      }
    } catch (error) {
      // the daemon restarting: keep trying at the same pace
    }
    if (!element.querySelector("[data-final]")) {
      window.setTimeout(tick, every);
    }
  }
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(follow);
  document.querySelectorAll("#filters select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
});
