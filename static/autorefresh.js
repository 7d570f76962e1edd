/* Firework dashboard: keep a page's live part current without reloading.
 *
 * The element with data-refresh-seconds is re-rendered by the server when the
 * same URL is asked for with ?fragment=1; every few seconds this fetches that
 * and swaps it in. Nothing is fetched while the tab is hidden, and a failed or
 * redirected fetch (an expired session goes to the login page) leaves the last
 * good content in place and says so on the element. Content that carries a
 * data-refresh-done element can no longer change (its runs have ended): the
 * fetching stops there.
 */
(function () {
  "use strict";

  var region = document.querySelector("[data-refresh-seconds]");
  if (!region || !window.fetch) {
    return;
  }
  var seconds = parseInt(region.getAttribute("data-refresh-seconds"), 10) || 5;
  var url = new URL(window.location.href);
  url.searchParams.set("fragment", "1");
  url.hash = "";
  var timer = null;
  var inFlight = false;

  function done() {
    if (region.querySelector("[data-refresh-done]")) {
      region.setAttribute("data-refresh-stopped", "done");
      return true;
    }
    return false;
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = null;
    if (!document.hidden && !done()) {
      timer = window.setTimeout(refresh, seconds * 1000);
    }
  }

  function refresh() {
    if (inFlight || document.hidden || done()) {
      return;
    }
    inFlight = true;
    window.fetch(url.toString(), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Requested-With": "fetch" }
    }).then(function (response) {
      if (!response.ok || response.redirected) {
        throw new Error("status " + response.status);
      }
      return response.text();
    }).then(function (html) {
      region.innerHTML = html;
      region.removeAttribute("data-refresh-error");
      region.setAttribute("data-refreshed-at", new Date().toISOString());
    }).catch(function (error) {
      region.setAttribute("data-refresh-error", String(error));
    }).then(function () {
      inFlight = false;
      schedule();
    });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      window.clearTimeout(timer);
      timer = null;
    } else {
      refresh();
    }
  });
  schedule();
})();
