/* tdfusion report viewer: per row of panels, synchronised zoom and pan, a swipe between
   any two panels, and full-size (native resolution) panels. Inlined into index.html by
   tdfusion.report.write_report: no network, no libraries, works from a file:// URL.

   A row is <div class="viewer">; each panel's <div class="view"> holds a <div class="stage">
   whose CSS transform is translate(x*100%, y*100%) scale(s) (origin top left), so the state
   (s, x, y) is in fractions of the view and every panel of the row, whatever its displayed
   size, shows the same region. Zooming or full size loads the full-resolution PNG
   (img[data-full]) in place of the light JPEG thumbnail. */
(function () {
  "use strict";
  var MAX_ZOOM = 64, CLICK_SLOP = 4;

  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

  function setupRow(row) {
    var st = { s: 1, x: 0, y: 0 };
    var views = Array.prototype.slice.call(row.querySelectorAll(".view"));
    var picks = Array.prototype.slice.call(row.querySelectorAll(".panel:not(.swipe) img"));
    var left = row.querySelector("select.swipe-left"), right = row.querySelector("select.swipe-right");
    var pos = row.querySelector("input.swipe-pos");
    var over = row.querySelector(".swipe-over"), handle = row.querySelector(".swipe-handle");
    var top = row.querySelector("img.swipe-top"), under = row.querySelector("img.swipe-under");
    var nativeButton = row.querySelector("button.native");

    function full(img) {  // the lossless panel instead of the thumbnail, once
      if (img.dataset.full && img.getAttribute("src") !== img.dataset.full) img.src = img.dataset.full;
    }

    function apply() {
      st.s = clamp(st.s, 1, MAX_ZOOM);
      st.x = clamp(st.x, 1 - st.s, 0);
      st.y = clamp(st.y, 1 - st.s, 0);
      var t = "translate(" + (st.x * 100).toFixed(4) + "%, " + (st.y * 100).toFixed(4) + "%) scale(" +
              st.s.toFixed(4) + ")";
      views.forEach(function (view) {
        Array.prototype.forEach.call(view.querySelectorAll(".stage"), function (stage) {
          stage.style.transform = t;
          var img = stage.querySelector("img");
          // Past 2 screen pixels per image pixel, show the pixels rather than a blur.
          var w = img && Number(img.dataset.w);
          stage.classList.toggle("px", !!w && st.s * view.clientWidth / w > 2);
          if (st.s > 1 && img) full(img);
        });
      });
      row.classList.toggle("zoomed", st.s > 1);
    }

    function reset() { st.s = 1; st.x = 0; st.y = 0; apply(); }

    function zoomAt(view, clientX, clientY, factor) {
      var r = view.getBoundingClientRect();
      var u = (clientX - r.left) / r.width, v = (clientY - r.top) / r.height;
      var s = clamp(st.s * factor, 1, MAX_ZOOM);
      if (s === st.s) return false;
      st.x = u - s * (u - st.x) / st.s;
      st.y = v - s * (v - st.y) / st.s;
      st.s = s;
      apply();
      return true;
    }

    function setSwipe(p) {
      p = clamp(Number(p), 0, 100);
      if (over) over.style.clipPath = "inset(0 " + (100 - p).toFixed(2) + "% 0 0)";
      if (handle) handle.style.left = p.toFixed(2) + "%";
      if (pos && Number(pos.value) !== p) pos.value = p;
    }

    function pick(select, img) {
      if (!select || !img) return;
      var src = picks[Number(select.value)];
      if (!src) return;
      img.dataset.full = src.dataset.full;
      img.dataset.w = src.dataset.w;
      img.alt = src.alt;
      img.src = (st.s > 1 || row.classList.contains("native")) ? src.dataset.full : src.getAttribute("src");
      var label = row.querySelector(".swipe-label");
      if (label && left && right) {
        label.textContent = left.options[left.selectedIndex].text + " | " + right.options[right.selectedIndex].text;
      }
    }

    function setNative(on) {
      row.classList.toggle("native", on);
      views.forEach(function (view) {
        var img = view.querySelector("img");
        view.style.width = on ? img.dataset.w + "px" : view.dataset.width + "px";
        if (on) Array.prototype.forEach.call(view.querySelectorAll("img"), full);
      });
      if (nativeButton) {
        nativeButton.setAttribute("aria-pressed", on ? "true" : "false");
        nativeButton.textContent = on ? "fit" : "full size";
      }
      apply();
    }

    views.forEach(function (view) {
      view.dataset.width = parseFloat(view.style.width) || view.clientWidth;
      view.addEventListener("wheel", function (e) {
        var dy = e.deltaY * (e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1);
        // At zoom 1, turning the wheel towards zooming out scrolls the page as usual.
        if (zoomAt(view, e.clientX, e.clientY, Math.exp(-dy * 0.002))) e.preventDefault();
      }, { passive: false });

      var drag = null;
      view.addEventListener("pointerdown", function (e) {
        if (e.button !== 0) return;
        var onHandle = handle && (e.target === handle || handle.contains(e.target));
        drag = { id: e.pointerId, x0: e.clientX, y0: e.clientY, sx: st.x, sy: st.y, moved: false,
                 handle: onHandle, rect: view.getBoundingClientRect() };
        if (view.setPointerCapture) view.setPointerCapture(e.pointerId);
        e.preventDefault();
      });
      view.addEventListener("pointermove", function (e) {
        if (!drag || e.pointerId !== drag.id) return;
        var dx = e.clientX - drag.x0, dy = e.clientY - drag.y0;
        if (Math.abs(dx) + Math.abs(dy) > CLICK_SLOP) drag.moved = true;
        if (drag.handle) {
          setSwipe(100 * (e.clientX - drag.rect.left) / drag.rect.width);
        } else if (drag.moved) {
          st.x = drag.sx + dx / drag.rect.width;
          st.y = drag.sy + dy / drag.rect.height;
          apply();
        }
      });
      function end(e) {
        if (!drag || e.pointerId !== drag.id) return;
        var d = drag;
        drag = null;
        if (e.type !== "pointerup" || d.moved) return;
        if (view.classList.contains("swipe-view")) {
          setSwipe(100 * (e.clientX - d.rect.left) / d.rect.width);  // a click moves the divider there
        } else {
          setNative(!row.classList.contains("native"));  // a click on a panel: full size, and back
        }
      }
      view.addEventListener("pointerup", end);
      view.addEventListener("pointercancel", end);
    });

    if (pos) pos.addEventListener("input", function () { setSwipe(pos.value); });
    if (left) left.addEventListener("change", function () { pick(left, top); });
    if (right) right.addEventListener("change", function () { pick(right, under); });
    var resetButton = row.querySelector("button.zoom-reset");
    if (resetButton) resetButton.addEventListener("click", reset);
    if (nativeButton) nativeButton.addEventListener("click", function () {
      setNative(!row.classList.contains("native"));
    });
    row.classList.add("ready");
    if (pos) setSwipe(pos.value);
    apply();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".viewer"), setupRow);
})();
