"""GET /docs: the API reference as one self-contained HTML page, rendered here from the app's
OpenAPI schema. FastAPI's default /docs and /redoc load Swagger UI / ReDoc from a CDN and are
blank where the service cannot reach the internet (most clusters); this page needs nothing but
the service. The machine-readable schema stays at /openapi.json."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#222}
h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
code,pre{background:#f4f4f4;border-radius:3px;padding:0 .25rem}
.verb{font-weight:bold;padding:.1rem .4rem;border-radius:3px;color:#fff;background:#555}
.post{background:#2a7d46}.get{background:#2a5d8a}.head{background:#777}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}
"""


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(info.get('summary', ''))}</p>",
        "<p>The schema itself: <a href='/openapi.json'><code>/openapi.json</code></a>. Errors are "
        'always JSON: <code>{"error": {"code": ..., "message": ...}}</code>.</p>',
    ]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            parts += _operation(path, method, op)
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    m = method.lower()
    out = [
        f"<h2><span class='verb {m}'>{m.upper()}</span> <code>{escape(path)}</code></h2>",
        f"<p><b>{escape(op.get('summary', ''))}</b></p>",
    ]
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>query parameter</th><th>type</th><th>meaning</th></tr>")
        for p in params:
            s = p.get("schema", {})
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(_type(s))}</td>"
                f"<td>{escape(p.get('description') or s.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        kinds = ", ".join(body.get("content", {}))
        out.append(f"<p>Body: {escape(body.get('description', ''))} ({escape(kinds)})</p>")
    codes = ", ".join(f"{c} {escape(r.get('description', ''))}" for c, r in op["responses"].items())
    out.append(f"<p>Answers: {codes}</p>")
    return out


def _type(s: dict[str, Any]) -> str:
    if "anyOf" in s:
        return " | ".join(_type(x) for x in s["anyOf"])
    if "enum" in s:
        return " | ".join(str(v) for v in s["enum"])
    t = str(s.get("type", "object"))
    if "default" in s:
        t += f" (default {s['default']})"
    return t
