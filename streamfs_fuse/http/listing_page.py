"""The HTML listing of a directory: a page a person keeps open.

The server renders the rows once (so the page works without JavaScript);
then a few lines of script fetch the same directory as JSON every second
(the listing the door already serves, for the same identity) and update each
row's size, write rate, readers and writers, with a sparkline of the rate
over the last minute. No framework; names reach the DOM only as text.
"""

from __future__ import annotations

import html
import os

__all__ = ["listing_page"]

#: Seconds between updates, and how many rates a sparkline shows.
INTERVAL = 1
SPARK_POINTS = 60

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em}
table{border-collapse:collapse}
th,td{padding:.25em .8em;text-align:right;border-bottom:1px solid #ddd}
th:first-child,td:first-child{text-align:left}
svg{vertical-align:middle}polyline{fill:none;stroke:#2a6;stroke-width:1.5}
#updated{color:#777}
"""

SCRIPT = """
const spark = new Map(), last = new Map(), updated = document.getElementById('updated');
let rows = document.getElementById('rows');
function size(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + ' ' + units[i];
}
function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }
function line(rates) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', WIDTH); svg.setAttribute('height', 20);
  const top = Math.max(...rates, 1), p = document.createElementNS(svg.namespaceURI, 'polyline');
  const left = POINTS - rates.length;  // the newest rate is at the right edge
  p.setAttribute('points', rates.map((r, i) =>
    ((left + i) * WIDTH / (POINTS - 1)).toFixed(1) + ',' + (19 - 18 * r / top).toFixed(1))
    .join(' '));
  svg.appendChild(p);
  return svg;
}
async function tick() {
  let entries;
  try {
    const answer = await fetch(location.pathname, {headers: {Accept: 'application/json'},
                                                   cache: 'no-store'});
    if (!answer.ok) throw new Error(answer.status + ' ' + answer.statusText);
    entries = await answer.json();
  } catch (e) { updated.textContent = 'not updated: ' + e.message; return; }
  const now = performance.now() / 1000, body = document.createElement('tbody');
  body.id = 'rows';
  for (const entry of entries) {
    const dir = entry.type === 'directory', before = last.get(entry.name);
    // A rate needs two readings: the first one shows none.
    const rate = before && Math.max(0, entry.size - before.size) / (now - before.at);
    last.set(entry.name, {size: entry.size, at: now});
    const rates = (spark.get(entry.name) || []).concat(before ? [rate] : []).slice(-POINTS);
    spark.set(entry.name, rates);
    const row = body.insertRow(), link = document.createElement('a');
    link.href = location.pathname + encodeURIComponent(entry.name) + (dir ? '/' : '');
    link.textContent = entry.name + (dir ? '/' : '');
    row.insertCell().appendChild(link);
    cell(row, dir ? '' : size(entry.size)).className = 'size';
    cell(row, dir || !before ? '' : size(rate) + '/s').className = 'rate';
    cell(row, dir ? '' : entry.readers).className = 'readers';
    cell(row, dir ? '' : entry.writers).className = 'writers';
    row.insertCell().appendChild(dir ? document.createTextNode('') : line(rates));
  }
  const names = new Set(entries.map(entry => entry.name));
  for (const name of last.keys()) if (!names.has(name)) { last.delete(name); spark.delete(name); }
  rows.replaceWith(body);
  rows = body;
  updated.textContent = 'updated ' + new Date().toLocaleTimeString();
}
tick();
setInterval(tick, INTERVAL * 1000);
"""


def listing_page(entries: list[dict], names: list[bytes]) -> str:
    """The page for the directory at ``names``, with ``entries`` as the JSON listing has them."""
    base = "/" + "".join(os.fsdecode(n) + "/" for n in names)
    rows = []
    for entry in entries:
        directory = entry["type"] == "directory"
        name = entry["name"] + ("/" if directory else "")
        figures = ("", "", "", "") if directory else (
            f"{entry['size']} B", "", entry["readers"], entry["writers"])
        rows.append(f'<tr><td><a href="{html.escape(base + name, quote=True)}">'
                    f'{html.escape(name)}</a>'
                    + "".join(f"<td>{value}" for value in figures) + "<td>")
    title = html.escape(base)
    script = f"const WIDTH = 120, POINTS = {SPARK_POINTS}, INTERVAL = {INTERVAL};{SCRIPT}"
    return (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
            f"<style>{STYLE}</style><h1>{title}</h1>"
            "<table><thead><tr><th>name<th>size<th>write rate<th>readers<th>writers"
            f"<th>rate, last {SPARK_POINTS} s</thead><tbody id=rows>{''.join(rows)}</tbody>"
            f"</table><p id=updated></p><script>{script}</script>")
