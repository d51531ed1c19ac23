// The studio's only script: reload when the server says a template or the config changed,
// and size each preview frame to its email so the page scrolls, not the frames.
(function () {
  "use strict";
  var version = document.documentElement.getAttribute("data-live-version");
  if (version && window.EventSource) {
    var source = new EventSource("/studio/events?v=" + encodeURIComponent(version));
    source.addEventListener("reload", function () {
      source.close();
      window.location.reload();
    });
  }
  function fit(frame) {
    try {
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) {
        frame.style.height = "0px"; // measure the email, not the frame's previous height
        frame.style.height = doc.documentElement.scrollHeight + "px";
      }
    } catch (e) { /* a cross-origin frame keeps its fixed height */ }
  }
  document.querySelectorAll("iframe[data-fit]").forEach(function (frame) {
    frame.addEventListener("load", function () { fit(frame); });
    fit(frame);
  });
})();
