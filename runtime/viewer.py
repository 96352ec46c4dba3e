"""The zoomable map of ``S_report.html``: Leaflet over the tile pyramid, vectors inline.

The page stays one file that opens from the file system with no network: Leaflet
(vendored, ``stmap/data/viewer``) and its stylesheet are inlined, the damaged
areas, buildings and grid cells are GeoJSON in the page, and the only files it
loads are the tiles in ``S_map/`` beside it, by relative path. Coordinates in the
page are the raster's pixels (``L.CRS.Simple``, see ``viewer_tiles``); the cursor's
latitude and longitude are interpolated in a grid of nodes projected here with
pyproj (17 × 17 over the scene: the projection is smooth at that scale, so the
interpolation is exact to well below a pixel).

``?stmap-test=ZOOMS`` in the page's URL runs a self-test for headless browsers: it
shows each zoom level in turn, records which levels loaded imagery tiles, clicks
the first building (or damaged area) and writes what its popup shows into
``#stmap-test-result``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import cache
from html import escape
from importlib import resources
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from stmap.io.vectors import VectorTable, transform_geometries

from .buildings import ID_COLUMNS
from .styles import GRID_SHARES, LABEL_COLOURS, PROB_STOPS
from .vectorize import apply_affine
from .viewer_tiles import Pyramid

MAX_FEATURES = {"damage": 5000, "buildings": 20000, "grid": 10000}  # kept inline per layer
LONLAT_NODES = 17  # per side of the grid of projected nodes
_CLEAR_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def viewer_data(
    *,
    tiles: str,
    pyramid: Pyramid,
    crs: Any,
    transform: Affine,
    metres_per_px: float,
    threshold: float,
    cell_m: float,
    damage: VectorTable,
    buildings: VectorTable | None,
    grid: VectorTable,
) -> dict[str, Any]:
    """Everything the page's map needs, as JSON-able values.

    tiles: the pyramid's folder, relative to the page.
    crs, transform: the raster's (None CRS: pixel coordinates only).
    """
    layers, notes = {}, []
    for name, table in (("damage", damage), ("buildings", buildings), ("grid", grid)):
        if table is None:
            continue
        chosen, total = _pick(name, _source_id_first(table))
        layers[name] = _geojson(chosen, crs, transform)
        if len(chosen) < total:
            notes.append(
                f"The map shows {len(chosen):,} of {total:,} {_NOUNS[name]} (the "
                f"{_ORDER[name]}); all are in the GeoPackage."
            )
    return {
        "tiles": tiles,
        "width": pyramid.width,
        "height": pyramid.height,
        "native": pyramid.native,
        "top": pyramid.top,
        "metres_per_px": metres_per_px,
        "threshold": threshold,
        "cell_m": cell_m,
        "lonlat": lonlat_grid(crs, transform, pyramid.width, pyramid.height),
        "north_deg": None if crs is None else round(_north(transform), 2),
        "layers": layers,
        "notes": notes,
    }


_NOUNS = {"damage": "damaged areas", "buildings": "buildings", "grid": "grid cells"}
_ORDER = {
    "damage": "largest",
    "buildings": "damaged and unknown first",
    "grid": "most damaged",
}


def _north(transform: Affine) -> float:
    from .report import north_angle  # the report imports this module

    return north_angle(list(transform)[:6])


def _pick(name: str, table: VectorTable) -> tuple[VectorTable, int]:
    """The features of a layer the page holds, at most ``MAX_FEATURES``, most telling first."""
    cap, total = MAX_FEATURES[name], len(table)
    if total <= cap:
        return table, total
    attrs = table.attributes
    if name == "damage":
        order = np.argsort(-np.asarray(attrs["area_m2"], float), kind="stable")
    elif name == "buildings":
        order = np.argsort(np.asarray(attrs["label"]) == "undamaged", kind="stable")
    else:
        order = np.argsort(-np.asarray(attrs["damaged_area_m2"], float), kind="stable")
    return table.take(np.sort(order[:cap])), total


def _source_id_first(table: VectorTable) -> VectorTable:
    """The columns with the source's own identifiers (``osm_id``…) before the file's FID,
    so that a popup is titled by the ID a person looks up elsewhere."""
    names = list(table.attributes)
    ids = [
        n for n in names if n != table.fid_name and (n.lower() in ID_COLUMNS or n.endswith("_id"))
    ]
    if not ids:
        return table
    order = ids + [n for n in names if n not in ids]
    attributes = {n: table.attributes[n] for n in order}
    return VectorTable(table.geometries, attributes, table.crs, table.fid_name)


def _geojson(table: VectorTable, crs: Any, transform: Affine) -> dict[str, Any]:
    """A FeatureCollection of ``table`` in the raster's pixel coordinates (x col, y row)."""
    geometries = table.geometries
    if crs is not None and table.crs is not None and CRS.from_user_input(table.crs) != crs:
        geometries = transform_geometries(geometries, table.crs, crs)
    pixels = shapely.set_precision(apply_affine(geometries, ~transform), 0.1)
    features = []
    columns = list(table.attributes.items())
    for i, geometry in enumerate(pixels):
        if geometry is None or shapely.is_empty(geometry):
            continue
        properties = {name: _plain(values[i]) for name, values in columns}
        features.append(
            {
                "type": "Feature",
                "geometry": json.loads(shapely.to_geojson(geometry)),
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _plain(value: Any) -> Any:
    """A JSON value for a column's cell (NaN as null)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def lonlat_grid(
    crs: Any, transform: Affine, width: int, height: int, nodes: int = LONLAT_NODES
) -> list[list[list[float]]] | None:
    """[row][col] of [lon, lat] at ``nodes`` × ``nodes`` pixel positions over the raster.

    Node (i, j) sits at pixel (col, row) = (j · width, i · height) / (nodes − 1). None
    without a CRS.
    """
    if crs is None:
        return None
    cols, rows = np.meshgrid(
        np.linspace(0, width, nodes), np.linspace(0, height, nodes), indexing="xy"
    )
    xs, ys = transform @ (cols, rows)
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
    return np.round(np.stack([lon, lat], axis=-1), 7).tolist()


# -- the page -------------------------------------------------------------------


@cache
def _leaflet() -> tuple[str, str]:
    """(JavaScript, CSS) of the vendored Leaflet, the CSS's images as data URIs."""
    folder = resources.files("stmap") / "data" / "viewer"
    script = (folder / "leaflet.js").read_text(encoding="utf-8")
    css = (folder / "leaflet.css").read_text(encoding="utf-8")

    def inline(match: re.Match[str]) -> str:
        data = (folder / match.group(1)).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(data).decode('ascii')})"

    css = re.sub(r"url\((images/[a-z0-9-]+\.png)\)", inline, css)
    return script, css


_MAP_STYLE = """
#stmap-map{height:640px;border:1px solid #c8ced4;background:#282828}
#stmap-test-result{white-space:pre-wrap;word-break:break-all;font-size:12px}
.stmap-box{background:#fff;padding:6px 10px;border-radius:5px;font:13px/1.4 system-ui,sans-serif;
box-shadow:0 1px 4px rgba(0,0,0,.35)}
.stmap-ramp{width:180px;height:12px;border:1px solid #777}
.stmap-ticks{display:flex;justify-content:space-between;width:182px;font-size:11px}
.stmap-box input{width:180px}
.stmap-popup table{border-collapse:collapse;font-size:12px}
.stmap-popup td,.stmap-popup th{padding:1px 6px;border-bottom:1px solid #eee;text-align:left}
"""


def render_map(data: Mapping[str, Any]) -> str:
    """The map's HTML: Leaflet, its style, the data and the script that draws it."""
    script, css = _leaflet()
    payload = json.dumps(data, separators=(",", ":"), sort_keys=False).replace("</", "<\\/")
    notes = "".join(f'<p class="sub">{escape(n)}</p>' for n in data["notes"])
    return (
        f"<style>{css}{_MAP_STYLE}</style><script>{script}</script>"
        '<div id="stmap-map" role="application" aria-label="zoomable damage map"></div>'
        '<pre id="stmap-test-result" hidden></pre>'
        f"{notes}"
        f'<script type="application/json" id="stmap-viewer-data">{payload}</script>'
        f"<script>{_page_script()}</script>"
    )


def _ramp_css() -> str:
    stops = ", ".join(
        f"rgba({r},{g},{b},{max(a, 40) / 255:.2f}) {100 * p:g}%" for p, (r, g, b, a) in PROB_STOPS
    )
    return f"linear-gradient(to right, {stops})"


def _page_script() -> str:
    labels = {k: "#{:02x}{:02x}{:02x}".format(*v[:3]) for k, v in LABEL_COLOURS.items()}
    constants = json.dumps(
        {"ramp": _ramp_css(), "labels": labels, "clear": _CLEAR_GIF, "shares": GRID_SHARES}
    )
    return _SCRIPT.replace("__CONSTANTS__", constants)


_SCRIPT = r"""
(function () {
'use strict';
var K = __CONSTANTS__;
var V = JSON.parse(document.getElementById('stmap-viewer-data').textContent);
var s = 1 / Math.pow(2, V.native);
// Map units are raster pixels: lat = row (down), lng = column; distances in metres.
var crs = L.extend({}, L.CRS.Simple, {
  transformation: new L.Transformation(s, 0, s, 0),
  distance: function (a, b) {
    return Math.hypot(a.lat - b.lat, a.lng - b.lng) * V.metres_per_px;
  }
});
var bounds = L.latLngBounds([0, 0], [V.height, V.width]);
var map = L.map('stmap-map', {
  crs: crs, minZoom: 0, maxZoom: V.native + 2, preferCanvas: true,
  maxBounds: bounds.pad(0.25), attributionControl: false
});
map.fitBounds(bounds);
var tileOptions = {
  tileSize: 256, bounds: bounds, noWrap: true, minZoom: 0, maxZoom: V.native + 2,
  maxNativeZoom: V.top, errorTileUrl: K.clear
};
var image = L.tileLayer(V.tiles + '/image/{z}/{x}/{y}.jpg', tileOptions).addTo(map);
var damage = L.tileLayer(V.tiles + '/damage/{z}/{x}/{y}.png',
  L.extend({}, tileOptions, {opacity: 0.85})).addTo(map);

function esc(v) {
  return String(v).replace(/[&<>"]/g, function (c) {
    return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c];
  });
}
function fmt(v) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number' && !Number.isInteger(v)) return v.toPrecision(4);
  return v;
}
function popup(title, props) {
  var rows = Object.keys(props).map(function (k) {
    return '<tr><th>' + esc(k) + '</th><td>' + esc(fmt(props[k])) + '</td></tr>';
  }).join('');
  return '<div class="stmap-popup"><b>' + esc(title) + '</b><table>' + rows + '</table></div>';
}
var overlays = {};
var L_ = V.layers;
if (L_.grid) {
  overlays['grid cells (' + V.cell_m + ' m)'] = L.geoJSON(L_.grid, {
    style: function (f) {
      var share = (f.properties.damaged_area_m2 || 0) / (V.cell_m * V.cell_m);
      return {color: share > 0 ? '#fd8d3c' : '#999', weight: share > 0 ? 1.5 : 0.5,
              fillOpacity: 0, opacity: 0.8};
    },
    onEachFeature: function (f, layer) {
      layer.bindPopup(popup('Grid cell ' + f.properties.cell_id, f.properties));
    }
  }).addTo(map);
}
if (L_.damage) {
  overlays['damaged areas'] = L.geoJSON(L_.damage, {
    style: {color: '#ffeb3c', weight: 1.5, fillOpacity: 0},
    onEachFeature: function (f, layer) { layer.bindPopup(popup('Damaged area', f.properties)); }
  }).addTo(map);
}
var buildings = null;
if (L_.buildings) {
  buildings = L.geoJSON(L_.buildings, {
    style: function (f) {
      var c = K.labels[f.properties.label] || '#999';
      return {color: c, weight: 1, fillColor: c, fillOpacity: 0.35};
    },
    onEachFeature: function (f, layer) {
      var keys = Object.keys(f.properties);
      var title = keys.length ? keys[0] + ' ' + f.properties[keys[0]] : 'Building';
      layer.bindPopup(popup('Building ' + title, f.properties));
    }
  }).addTo(map);
  overlays['buildings'] = buildings;
}
overlays['damage probability'] = damage;
overlays['imagery'] = image;
L.control.layers(null, overlays, {collapsed: false}).addTo(map);
L.control.scale({imperial: false, maxWidth: 160}).addTo(map);
if (V.north_deg !== null) {
  var north = L.control({position: 'topleft'});
  north.onAdd = function () {
    var div = L.DomUtil.create('div', 'stmap-box');
    div.title = 'north';
    div.innerHTML = '<div style="transform:rotate(' + V.north_deg + 'deg);text-align:center;' +
      'font-weight:bold;line-height:1">N<br>&#9650;</div>';
    return div;
  };
  north.addTo(map);
}

var legend = L.control({position: 'bottomright'});
legend.onAdd = function () {
  var div = L.DomUtil.create('div', 'stmap-box');
  var html = '<b>Damage probability</b><div class="stmap-ramp" style="background:' +
    K.ramp + '"></div><div class="stmap-ticks"><span>0</span><span>0.5</span><span>1</span></div>' +
    '<label>opacity <input id="stmap-opacity" type="range" min="0" max="100" value="85"></label>' +
    '<div>threshold ' + V.threshold + '; damaged areas outlined in yellow</div>';
  if (L_.buildings) {
    html += '<div>' + Object.keys(K.labels).map(function (k) {
      return '<span style="display:inline-block;width:11px;height:11px;margin:0 4px 0 8px;' +
        'background:' + K.labels[k] + '"></span>' + k;
    }).join('') + '</div>';
  }
  div.innerHTML = html;
  L.DomEvent.disableClickPropagation(div);
  L.DomEvent.disableScrollPropagation(div);
  div.querySelector('input').addEventListener('input', function (e) {
    damage.setOpacity(e.target.value / 100);
  });
  return div;
};
legend.addTo(map);

function lonlat(row, col) {
  var g = V.lonlat, n = g.length - 1;
  var u = Math.min(Math.max(col / V.width * n, 0), n);
  var v = Math.min(Math.max(row / V.height * n, 0), n);
  var j = Math.min(Math.floor(u), n - 1), i = Math.min(Math.floor(v), n - 1);
  var fu = u - j, fv = v - i, out = [0, 0];
  for (var k = 0; k < 2; k++) {
    out[k] = (1 - fv) * ((1 - fu) * g[i][j][k] + fu * g[i][j + 1][k]) +
      fv * ((1 - fu) * g[i + 1][j][k] + fu * g[i + 1][j + 1][k]);
  }
  return out;
}
var cursor = L.control({position: 'bottomleft'});
cursor.onAdd = function () {
  var div = L.DomUtil.create('div', 'stmap-box');
  div.id = 'stmap-cursor';
  div.textContent = V.lonlat ? 'lat, lon' : 'row, column';
  return div;
};
cursor.addTo(map);
map.on('mousemove', function (e) {
  var row = e.latlng.lat, col = e.latlng.lng, text;
  if (V.lonlat) {
    var p = lonlat(row, col);
    text = p[1].toFixed(6) + ', ' + p[0].toFixed(6);
  } else {
    text = 'row ' + Math.floor(row) + ', column ' + Math.floor(col);
  }
  document.getElementById('stmap-cursor').textContent = text;
});
window.stmapMap = {map: map, image: image, damage: damage, lonlat: lonlat};

// -- the self-test for headless browsers (?stmap-test=0,3) ---------------------
var test = new URLSearchParams(window.location.search).get('stmap-test');
if (test === null) return;
var loaded = {};
image.on('tileload', function (e) {
  if (e.tile.naturalWidth > 1) loaded[e.coords.z] = (loaded[e.coords.z] || 0) + 1;
});
function settle(layer) {
  return new Promise(function (done) {
    var waited = 0;
    (function poll() {
      if (!layer.isLoading() || waited > 100) { done(); return; }
      waited++; setTimeout(poll, 50);
    })();
  });
}
var zooms = test.split(',').filter(Boolean).map(Number);
var result = {zooms: zooms, loaded: loaded};
(async function () {
  for (var z of zooms) {
    map.setView(bounds.getCenter(), z, {animate: false});
    await settle(image);
  }
  var target = buildings || (overlays['damaged areas'] || null);
  var first = target && target.getLayers()[0];
  if (first) {
    map.fitBounds(first.getBounds(), {animate: false, maxZoom: V.native});
    await settle(image);
    var p = map.latLngToContainerPoint(first.getBounds().getCenter()).round();
    var c = map.getContainer(), r = c.getBoundingClientRect();
    var box = {left: r.left + c.clientLeft, top: r.top + c.clientTop};  // inside the border
    var at = document.elementFromPoint(box.left + p.x, box.top + p.y);
    ['mousedown', 'mouseup', 'click'].forEach(function (type) {
      at.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true,
        clientX: box.left + p.x, clientY: box.top + p.y, button: 0}));
    });
    var content = document.querySelector('.leaflet-popup-content');
    result.clicked = first.feature.properties;
    result.popup = content ? content.textContent : null;
    map.getContainer().dispatchEvent(new MouseEvent('mousemove', {bubbles: true,
      clientX: box.left + p.x, clientY: box.top + p.y}));
    var at_ = map.containerPointToLatLng(p);
    result.pointer = {row: at_.lat, col: at_.lng};
    result.cursor = document.getElementById('stmap-cursor').textContent;
  }
  var out = document.getElementById('stmap-test-result');
  out.textContent = JSON.stringify(result);
  out.hidden = false;
  out.setAttribute('data-done', '1');
})();
})();
"""


def map_section(data: Mapping[str, Any] | None) -> Sequence[str]:
    """The report's interactive map, or nothing when the run made no viewer."""
    if data is None:
        return []
    return [render_map(data)]
