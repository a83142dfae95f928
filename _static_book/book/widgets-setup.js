// Loaded on pages with widgets, after require.js and before the widget manager (embed-amd.js).
(function () {
  // 1. The manager finds its own files (Font Awesome fonts) through the RequireJS URL of its module
  //    "@jupyter-widgets/html-manager/dist/...", which by default resolves against the page's
  //    folder. Point that module path at the copy the book serves, found relative to this script,
  //    so that it is right on every page and on any web host.
  var here = document.currentScript && document.currentScript.src;
  if (here && typeof require !== "undefined") {
    var staticDir = here.slice(0, here.lastIndexOf("/book/") + 1); // .../_static/
    require.config({ paths: { "@jupyter-widgets/html-manager/dist": staticDir + "offline/html-manager" } });
  }

  // 2. @jupyter-widgets/controls 5 typesets widget labels with the MathJax 2 call
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]) whenever window.MathJax exists; the book
  //    uses MathJax 3, where that is a TypeError in every widget view. Translate the call to
  //    MathJax 3's typesetPromise. Installed at DOMContentLoaded: MathJax (a deferred script) has
  //    replaced its configuration object by then, and the manager has not rendered anything yet.
  function installMathJax2Shim() {
    var MJ = window.MathJax;
    if (!MJ || MJ.Hub || typeof MJ.typesetPromise !== "function") return;
    MJ.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (job) {
          if (!Array.isArray(job) || job[0] !== "Typeset") return;
          var ready = MJ.startup && MJ.startup.promise ? MJ.startup.promise : Promise.resolve();
          ready
            .then(function () { return MJ.typesetPromise(job[2] ? [job[2]] : undefined); })
            .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
        });
      },
    };
  }
  document.addEventListener("DOMContentLoaded", installMathJax2Shim);
})();
