#!/usr/bin/env python3
"""Fails when the modules of any workspace crate import each other in a cycle.

Each source file is one module. An edge a -> b means a.rs names something in b (a `use` or an
inline `crate::`/`super::`/`self::` path); `mod b;` declarations are not edges, since they only
say where b lives. A path that names an item re-exported by a parent module points at that
parent, so `pub use` re-exports count like any other import.

Usage: scripts/module-cycles.py [crate-dir ...]   (default: every crates/*)
Prints each cycle (a strongly connected component of two or more modules) and exits 1 when
there is one; prints one line per crate and exits 0 otherwise.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def strip(source):
    """Source without comments, string and char literals (so paths in docs don't count)."""
    source = re.sub(r"//[^\n]*", "", source)
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    source = re.sub(r'r#*"(?:.|\n)*?"#*', '""', source)
    source = re.sub(r'"(?:\\.|[^"\\])*"', '""', source)
    source = re.sub(r"'(?:\\.|[^'\\])'", "''", source)
    return source


def modules(src):
    """Module path (tuple) of every .rs file under src."""
    found = {}
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["lib"], ["main"]):
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        if parts and parts[0] == "bin":
            continue
        found[tuple(parts)] = path
    return found


def use_paths(tree, prefix=""):
    """Expands one `use` tree (`a::{b, c::{d}}`) into its full paths."""
    tree = tree.strip()
    depth, start, items = 0, 0, []
    brace = tree.find("{")
    if brace < 0:
        yield prefix + tree.split(" as ")[0].strip()
        return
    head = tree[:brace]
    body = tree[brace + 1 : tree.rfind("}")]
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    for item in items:
        if item.strip():
            yield from use_paths(item, prefix + head)


def resolve(module, path, known):
    """The module a path names, as the longest known prefix, or None outside the crate."""
    parts = [p for p in path.split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    elif parts[0] in ("super", "self"):
        base = list(module)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    elif tuple(module) + (parts[0],) in known:
        # A child declared with `mod child;` is named without a prefix.
        base, rest = list(module), parts
    else:
        return None
    candidate = tuple(base + rest)
    while candidate not in known and candidate:
        candidate = candidate[:-1]
    return candidate if candidate in known else None


def edges(module, source, known):
    source = strip(source)
    # Test modules inside a file may use anything of their parent; they are not the file's API.
    cut = re.search(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+tests", source)
    if cut:
        source = source[: cut.start()]
    out = set()
    for match in re.finditer(r"\buse\s+([^;]+);", source):
        for path in use_paths(match.group(1)):
            target = resolve(module, path, known)
            if target is not None:
                out.add(target)
    for match in re.finditer(r"\b((?:crate|super|self)(?:::(?:super|\w+))+)", source):
        target = resolve(module, match.group(1), known)
        if target is not None:
            out.add(target)
    children = {m[-1] for m in known if len(m) == len(module) + 1 and m[:-1] == module}
    for child in children:
        for match in re.finditer(r"(?<![:\w])(" + re.escape(child) + r"(?:::\w+)+)", source):
            target = resolve(module, match.group(1), known)
            if target is not None:
                out.add(target)
    out.discard(module)
    # A module's own children are reached through its `mod` lines, not imports; a parent
    # naming its child's items is still an edge (it is how re-export cycles form).
    return out


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(component)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return result


def name(module):
    return "::".join(module) or "(crate root)"


def main(argv):
    crates = [pathlib.Path(a) for a in argv] or sorted((ROOT / "crates").iterdir())
    failed = False
    for crate in crates:
        src = crate / "src"
        if not src.is_dir():
            continue
        known = modules(src)
        graph = {m: edges(m, p.read_text(), known) for m, p in known.items()}
        found = cycles(graph)
        if not found:
            print(f"{crate.name}: {len(known)} modules, no import cycle")
            continue
        failed = True
        for component in found:
            members = set(component)
            print(f"{crate.name}: import cycle among {len(component)} modules:")
            for m in sorted(component):
                inside = sorted(name(t) for t in graph[m] if t in members)
                print(f"  {name(m)} -> {', '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
