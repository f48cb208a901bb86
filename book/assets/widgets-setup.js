// Runs between require.js and the ipywidgets embed manager on pages with widget snapshots
// (nb_ipywidgets_js in _config.yml). Two adjustments so the vendored manager works offline:
(function () {
  // 1. The embed manager finds its own files (Font Awesome fonts) at require.js's baseUrl plus
  //    its AMD module id; baseUrl defaults to the page's folder. Point it at the npm layout in
  //    _static/vendor/npm/, wherever the page is.
  require.config({ baseUrl: new URL("vendor/npm/", document.currentScript.src).href });

  // 2. Widget labels are typeset with the MathJax 2 API (MathJax.Hub.Queue) whenever a global
  //    MathJax exists; the book loads MathJax 3, which has no Hub, so that call would throw.
  //    Map it onto MathJax 3 before the manager renders (it renders on "load"; listeners run
  //    in the order they were added, and this one is added first).
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.startup) return;
    mj.Hub = {
      Queue: function (job) {  // job = ["Typeset", MathJax.Hub, element]
        mj.startup.promise.then(function () { return mj.typesetPromise([job[2]]); });
      },
    };
  });
})();
