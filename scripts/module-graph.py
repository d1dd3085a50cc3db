#!/usr/bin/env python3
"""The module structure of src/, generated from the code: which top-level module uses which
(`crate::X` anywhere in its files). Each module is drawn on the row of its layer (one above the
highest module it uses), so every arrow points down; a cycle has no layering and fails the
script (exit 1), naming the modules in it.

    python3 scripts/module-graph.py            # writes docs/modules.svg and docs/modules.dot
    python3 scripts/module-graph.py --check    # only checks (scripts/test.sh runs this)
"""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "src")


def modules_and_uses():
    uses = collections.defaultdict(set)
    modules = set()
    for directory, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            top = os.path.relpath(path, SRC).split(os.sep)[0].removesuffix(".rs")
            if top in ("main", "lib"):
                continue
            modules.add(top)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for used in re.findall(r"crate::([a-z_0-9]+)", text):
                if used != top:
                    uses[top].add(used)
    return sorted(modules), {m: sorted(uses[m] & modules) for m in modules}


def layers(modules, uses):
    """Layer 0: modules that use none; else one above the highest module used."""
    layer, visiting = {}, []

    def visit(m):
        if m in layer:
            return layer[m]
        if m in visiting:
            cycle = visiting[visiting.index(m):] + [m]
            sys.exit("module cycle: " + " -> ".join(cycle))
        visiting.append(m)
        layer[m] = 1 + max((visit(u) for u in uses[m]), default=-1)
        visiting.pop()
        return layer[m]

    for m in modules:
        visit(m)
    return layer


def svg(modules, uses, layer):
    rows = collections.defaultdict(list)
    for m in modules:
        rows[layer[m]].append(m)
    top = max(rows)
    width, row_height, box_w, box_h = 1100, 90, 96, 30
    height = (top + 1) * row_height + 40
    position = {}
    for level, names in rows.items():
        names.sort()
        y = 30 + (top - level) * row_height
        for i, name in enumerate(names):
            x = (i + 1) * width / (len(names) + 1)
            position[name] = (x, y)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        '<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for m in modules:
        x1, y1 = position[m]
        for u in uses[m]:
            x2, y2 = position[u]
            out.append(
                f'<line x1="{x1:.0f}" y1="{y1 + box_h / 2:.0f}" x2="{x2:.0f}" '
                f'y2="{y2 - box_h / 2:.0f}" stroke="#99a" stroke-width="1" marker-end="url(#a)"/>'
            )
    for m in modules:
        x, y = position[m]
        out.append(
            f'<rect x="{x - box_w / 2:.0f}" y="{y - box_h / 2:.0f}" width="{box_w}" '
            f'height="{box_h}" rx="5" fill="#eef3fb" stroke="#456"/>'
        )
        out.append(f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle">{m}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def dot(modules, uses):
    lines = ["digraph modules {", "  rankdir=TB;"]
    lines += [f"  {m} -> {u};" for m in modules for u in uses[m]]
    return "\n".join(lines + ["}"]) + "\n"


def main():
    modules, uses = modules_and_uses()
    layer = layers(modules, uses)
    docs = os.path.join(ROOT, "docs")
    pictures = {"modules.svg": svg(modules, uses, layer), "modules.dot": dot(modules, uses)}
    if "--check" in sys.argv:
        stale = [name for name, text in pictures.items()
                 if not os.path.exists(os.path.join(docs, name))
                 or open(os.path.join(docs, name)).read() != text]
        if stale:
            sys.exit(f"docs/{', docs/'.join(stale)} no longer match the code: "
                     "run python3 scripts/module-graph.py")
        print(f"module graph: {len(modules)} modules, "
              f"{sum(len(u) for u in uses.values())} dependencies, no cycle, docs/ up to date")
        return
    for name, text in pictures.items():
        with open(os.path.join(docs, name), "w") as f:
            f.write(text)
    for level in sorted(set(layer.values()), reverse=True):
        print(f"layer {level}: " + ", ".join(m for m in modules if layer[m] == level))


if __name__ == "__main__":
    main()
