// geounet's web map of one output folder: the page's settings are window.GEOUNET_MAP (written in index.html).
// Needs maplibre-gl.js and pmtiles.js (vendored beside this file) and nothing from the internet.
(function () {
  "use strict";
  var cfg = window.GEOUNET_MAP;
  var base = location.href.replace(/[?#].*$/, "").replace(/[^/]*$/, "");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  // the side panel: title, facts, layer switches, legend
  var panel = document.getElementById("panel");
  panel.appendChild(el("h1", {}, cfg.title));
  if (location.protocol === "file:") {
    panel.appendChild(el("p", { "class": "warning", id: "file-warning" },
      "Opened as a file: browsers do not let a page read its tiles from file://. " +
      "Serve this folder: geounet view " + cfg.folder_hint + " (or any web server that answers byte ranges)."));
  }
  var facts = el("table", { id: "facts" });
  cfg.facts.forEach(function (row) {
    var tr = el("tr");
    tr.appendChild(el("th", {}, row[0]));
    tr.appendChild(el("td", {}, row[1]));
    facts.appendChild(tr);
  });
  panel.appendChild(facts);

  var layersBox = el("div", { id: "layers" });
  layersBox.appendChild(el("h2", {}, "Layers"));
  panel.appendChild(layersBox);
  var legend = el("div", { id: "legend" });
  legend.appendChild(el("h2", {}, cfg.legend_title));
  cfg.legend.forEach(function (item) {
    var row = el("div", { "class": "legend-row" });
    var sw = el("span", { "class": "swatch" });
    sw.style.background = item.color;
    row.appendChild(sw);
    row.appendChild(el("span", { "class": "legend-label" }, item.label));
    if (item.count !== null && item.count !== undefined) row.appendChild(el("span", { "class": "legend-count" }, String(item.count)));
    legend.appendChild(row);
  });
  panel.appendChild(legend);

  // the map's style: a plain background, the rasters, then the vectors' fills and outlines
  var protocol = new pmtiles.Protocol();
  maplibregl.addProtocol("pmtiles", protocol.tile);
  var style = { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": cfg.background } }] };
  var switches = [];
  cfg.rasters.forEach(function (r) {
    style.sources[r.id] = { type: "raster", tiles: [base + r.tiles], tileSize: 256, minzoom: r.minzoom, maxzoom: r.maxzoom, bounds: r.bounds };
    style.layers.push({
      id: r.id, type: "raster", source: r.id,
      layout: { visibility: r.visible ? "visible" : "none" },
      paint: { "raster-opacity": r.opacity, "raster-resampling": r.classes ? "nearest" : "linear", "raster-fade-duration": 0 }
    });
    switches.push({ id: r.id, label: r.label, layers: [r.id], visible: r.visible });
  });
  var clickable = [];
  var fieldsOf = {};
  var driverOf = {};

  // a damage grade's score is 1 - (1 - w c D)(1 - F): say which of the two terms is the larger
  function damageDriver(weight) {
    return function (p) {
      var f = p.change_term, c = p.confidence, d = p.presence_drop;
      if (f === undefined || c === undefined || d === undefined) return "not assessed";
      var e = Math.min(1, Math.max(0, weight * c * d));
      return e >= f ? "building presence lost (w c D = " + e.toFixed(3) + " >= F = " + f.toFixed(3) + ")"
        : "image change (F = " + f.toFixed(3) + " > w c D = " + e.toFixed(3) + ")";
    };
  }
  cfg.vectors.forEach(function (v) {
    style.sources[v.id] = { type: "vector", url: "pmtiles://" + base + v.file };
    var colour = v.fallback_color;  // a layer without a class attribute (road centre lines): one colour
    if (v.color_by) {
      colour = ["match", ["to-string", ["get", v.color_by]]];
      Object.keys(v.colors).forEach(function (k) { colour.push(k, v.colors[k]); });
      colour.push(v.fallback_color);
    }
    var polygons = ["in", ["geometry-type"], ["literal", ["Polygon", "MultiPolygon"]]];
    var lines = ["in", ["geometry-type"], ["literal", ["LineString", "MultiLineString"]]];
    style.layers.push({ id: v.id + "-fill", type: "fill", source: v.id, "source-layer": v.layer, filter: polygons,
      layout: { visibility: v.visible ? "visible" : "none" }, paint: { "fill-color": colour, "fill-opacity": v.opacity } });
    style.layers.push({ id: v.id + "-outline", type: "line", source: v.id, "source-layer": v.layer, filter: polygons,
      layout: { visibility: v.visible ? "visible" : "none" }, paint: { "line-color": colour, "line-width": 1 } });
    style.layers.push({ id: v.id + "-line", type: "line", source: v.id, "source-layer": v.layer, filter: lines,
      layout: { visibility: v.visible ? "visible" : "none" }, paint: { "line-color": colour, "line-width": 2.5 } });
    [v.id + "-fill", v.id + "-line"].forEach(function (id) {
      clickable.push(id);
      fieldsOf[id] = v.fields;
      if (v.damage_driver) driverOf[id] = damageDriver(v.damage_driver.prob_weight);
    });
    switches.push({ id: v.id, label: v.label, layers: [v.id + "-fill", v.id + "-outline", v.id + "-line"], visible: v.visible });
  });

  var map = new maplibregl.Map({
    container: "map", style: style, bounds: cfg.bounds, fitBoundsOptions: { padding: 30 },
    maxZoom: 24, attributionControl: false, fadeDuration: 0
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  map.addControl(new maplibregl.ScaleControl({ maxWidth: 160, unit: "metric" }), "bottom-left");
  window.geounetMap = map;

  switches.forEach(function (s) {
    var label = el("label", { "class": "switch" });
    var box = el("input", { type: "checkbox", id: "toggle-" + s.id });
    box.checked = s.visible;
    box.addEventListener("change", function () {
      s.layers.forEach(function (id) { map.setLayoutProperty(id, "visibility", box.checked ? "visible" : "none"); });
    });
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + s.label));
    layersBox.appendChild(label);
  });

  // a click on a feature: its attributes in a popup
  map.on("click", function (e) {
    var found = map.queryRenderedFeatures(e.point, { layers: clickable });
    if (!found.length) return;
    var f = found[0];
    var fields = fieldsOf[f.layer.id] || Object.keys(f.properties);
    var rows = fields.filter(function (k) { return f.properties[k] !== undefined; }).map(function (k) {
      return "<tr><th>" + escapeHtml(k) + "</th><td>" + escapeHtml(f.properties[k]) + "</td></tr>";
    });
    var driver = driverOf[f.layer.id];
    if (driver) rows.push("<tr><th>driven by</th><td>" + escapeHtml(driver(f.properties)) + "</td></tr>");
    new maplibregl.Popup({ maxWidth: "340px" }).setLngLat(e.lngLat)
      .setHTML('<table class="attributes">' + rows.join("") + "</table>").addTo(map);
  });
  map.on("mousemove", function (e) {
    var hit = map.queryRenderedFeatures(e.point, { layers: clickable }).length > 0;
    map.getCanvas().style.cursor = hit ? "pointer" : "";
  });
  map.once("idle", function () { window.geounetReady = true; });
})();
