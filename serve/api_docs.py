"""The ``/docs`` page: the endpoint's OpenAPI document rendered in the browser with no asset from the internet.

FastAPI's own ``/docs`` loads Swagger UI from a CDN and is blank offline; no package on the registry ships its
assets. This page is self-contained (inline CSS and script): it fetches ``openapi.json`` from the same server and
lists every operation with its parameters, request body fields, responses and the schemas they use.
"""

from __future__ import annotations

import html
import json

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
main{padding:16px 24px;max-width:1100px}
.op{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin:12px 0;padding:10px 14px}
.op h3{margin:0;font-size:15px;font-family:ui-monospace,monospace}
.method{display:inline-block;min-width:64px;text-align:center;border-radius:4px;color:#fff;padding:2px 6px;
  margin-right:8px;font-size:12px}
.get{background:#2e7d32}.post{background:#1565c0}.delete{background:#c62828}.put,.patch{background:#ef6c00}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border-bottom:1px solid #e0e0e0;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
code{font-family:ui-monospace,monospace}.desc{white-space:pre-wrap;font-size:13px;color:#333}
#error{color:#c62828}
"""

_JS = """
(function(){
  var S = JSON.parse(document.getElementById('settings').textContent);
  var main = document.getElementById('operations'), errorBox = document.getElementById('error');
  function el(tag, attrs, children){
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function(k){ node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function(c){ node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return node;
  }
  function refName(ref){ return ref.split('/').pop(); }
  function typeOf(schema){
    if (!schema) return '';
    if (schema.$ref) return refName(schema.$ref);
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(' | ');
    if (schema.type === 'array') return typeOf(schema.items) + '[]';
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (schema.enum) return schema.enum.map(function(v){ return JSON.stringify(v); }).join(' | ');
    return schema.type || 'any';
  }
  function fieldsTable(schema, spec){
    if (schema && schema.$ref) schema = spec.components.schemas[refName(schema.$ref)];
    var props = (schema && schema.properties) || {}, required = (schema && schema.required) || [];
    var rows = Object.keys(props).map(function(name){
      var p = props[name];
      return el('tr', {}, [el('td', {}, [el('code', {}, [name])]), el('td', {}, [typeOf(p)]),
        el('td', {}, [required.indexOf(name) >= 0 ? 'required' : '']),
        el('td', {}, [p.description || p.title || ''])]);
    });
    return el('table', {}, [el('tr', {}, [el('th', {}, ['field']), el('th', {}, ['type']), el('th', {}, ['']),
      el('th', {}, ['description'])])].concat(rows));
  }
  function operation(path, method, op, spec){
    var box = el('div', {'class': 'op', 'data-path': path, 'data-method': method}, [
      el('h3', {}, [el('span', {'class': 'method ' + method}, [method.toUpperCase()]), path]),
      el('div', {'class': 'desc'}, [(op.summary || '') + (op.description ? '\\n' + op.description : '')])]);
    if (op.parameters && op.parameters.length){
      box.appendChild(el('div', {}, ['Parameters']));
      box.appendChild(el('table', {}, op.parameters.map(function(p){
        return el('tr', {}, [el('td', {}, [el('code', {}, [p.name])]), el('td', {}, [p['in']]),
          el('td', {}, [typeOf(p.schema)]), el('td', {}, [p.description || ''])]);
      })));
    }
    var body = op.requestBody && op.requestBody.content;
    if (body){
      var types = Object.keys(body);
      box.appendChild(el('div', {}, ['Body (' + types.join(', ') + ')']));
      box.appendChild(fieldsTable(body[types[0]].schema, spec));
    }
    var responses = op.responses || {};
    box.appendChild(el('table', {}, Object.keys(responses).map(function(code){
      var r = responses[code], content = r.content || {}, kinds = Object.keys(content);
      var shape = kinds.map(function(k){ return k + (content[k].schema ? ' ' + typeOf(content[k].schema) : ''); });
      return el('tr', {}, [el('td', {}, [code]), el('td', {}, [r.description || '']),
        el('td', {}, [shape.join(', ')])]);
    })));
    return box;
  }
  fetch(S.openapi_url).then(function(r){ return r.json(); }).then(function(spec){
    document.getElementById('description').textContent = (spec.info && spec.info.description) || '';
    Object.keys(spec.paths).forEach(function(path){
      Object.keys(spec.paths[path]).forEach(function(method){
        main.appendChild(operation(path, method, spec.paths[path][method], spec));
      });
    });
    var schemas = (spec.components && spec.components.schemas) || {};
    Object.keys(schemas).forEach(function(name){
      var box = el('div', {'class': 'op', 'data-schema': name}, [el('h3', {}, [name]),
        el('div', {'class': 'desc'}, [schemas[name].description || ''])]);
      box.appendChild(fieldsTable(schemas[name], spec));
      document.getElementById('schemas').appendChild(box);
    });
    document.body.setAttribute('data-ready', 'true');
  }).catch(function(err){ errorBox.textContent = 'Could not load ' + S.openapi_url + ': ' + err; });
})();
"""


def render_api_docs(*, title: str, openapi_url: str) -> str:
    """The whole page as a string; ``openapi_url`` is fetched relative to the page."""
    data_json = json.dumps({"openapi_url": openapi_url}).replace("<", "\\u003c")
    e = html.escape(title)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e} API</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{e} API</h1><div id="description"></div></header><main><div id="error"></div>'
        '<h2>Operations</h2><div id="operations"></div><h2>Schemas</h2><div id="schemas"></div></main>'
        f'<script id="settings" type="application/json">{data_json}</script><script>{_JS}</script></body></html>\n'
    )
