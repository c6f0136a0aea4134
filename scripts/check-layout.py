#!/usr/bin/env python3
"""Checks the workspace's layout rules (docs/ARCHITECTURE.md, "Invariants"):

- no Rust source file over 700 lines (third_party/ excepted: upstream code), and node/src/main.rs under 150;
- no import cycle between sibling modules of any crate (a module's children may use
  each other one way only), with references through a parent's re-exports resolved to
  the child that defines the item;
- node's `client` and `server` modules do not refer to each other.

A reference is any `crate::`, `super::`, `self::` or child-module path outside comments
and `#[cfg(test)]` modules. Prints what it finds and exits 1 on a violation.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATE_ROOTS = [
    "protocol/src/lib.rs",
    "shard-store/src/lib.rs",
    "node/src/lib.rs",
    "node/src/main.rs",
    "llama-patches/build.rs",
]
MAX_LINES, MAX_MAIN_LINES = 700, 150

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
PATH_REF = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)")
REEXPORT = re.compile(r"^\s*pub\s+use\s+(?:self::)?(\w+)::(\{[^}]*\}|\w+)\s*;", re.M)


def code_of(text):
    """The file's code without comments, string literals' contents or test modules."""
    test = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if test:
        text = text[: test.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def load_crate(root_file):
    """Module path (tuple) -> (file, code) for every module reachable from the root."""
    modules = {}

    def visit(path, file):
        code = code_of(file.read_text())
        modules[path] = (file, code)
        base = file.parent if file.name in ("mod.rs", "lib.rs", "main.rs") else file.with_suffix("")
        for child in MOD_DECL.findall(code):
            for candidate in (base / f"{child}.rs", base / child / "mod.rs"):
                if candidate.is_file():
                    visit(path + (child,), candidate)
                    break

    visit((), root_file)
    return modules


def resolve(modules, exports, path):
    """The deepest module a path names, following parents' `pub use child::Item`."""
    parts = list(path)
    mod = ()
    for part in parts:
        if mod + (part,) in modules:
            mod = mod + (part,)
        elif part in exports.get(mod, {}):
            mod = exports[mod][part]
        else:
            break
    return mod


USE_STMT = re.compile(r"\buse\s+([^;]+);")


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (whitespace removed)."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree.split(" as ")[0]]
    head, rest = tree.split("{", 1)
    inner, depth, parts, start = rest[:-1], 0, [], 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [head + p for part in parts if part for p in expand_use(part)]


def references(modules):
    """(from module, to module) for every path a module's code mentions."""
    exports = {}
    for mod, (_, code) in modules.items():
        for child, names in REEXPORT.findall(code):
            if mod + (child,) in modules:
                for name in re.findall(r"\w+", names):
                    exports.setdefault(mod, {})[name] = mod + (child,)
    edges = set()
    for mod, (_, code) in modules.items():
        children = {p[-1] for p in modules if p[:-1] == mod and len(p) == len(mod) + 1}
        uses = [p for stmt in USE_STMT.findall(code) for p in expand_use(stmt)]
        paths = [p.replace("::self", "") for p in uses] + PATH_REF.findall(USE_STMT.sub("", code))
        if children:
            paths += re.findall(r"(?<![\w:])((?:%s)(?:::\w+)+)" % "|".join(sorted(children)), code)
        for text in paths:
            parts = [p for p in text.split("::") if p]
            if not parts or parts[0] not in ("crate", "super", "self") and mod + (parts[0],) not in modules:
                continue  # another crate, or std
            if parts[0] == "crate":
                target = parts[1:]
            else:
                base = list(mod)
                while parts and parts[0] in ("super", "self"):
                    if parts.pop(0) == "super":
                        base = base[:-1]
                target = base + parts
            edges.add((mod, resolve(modules, exports, target)))
    return edges


def sibling_edges(edges):
    """Edges between children of one parent: a -> b where neither contains the other."""
    out = set()
    for a, b in edges:
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        if k < len(a) and k < len(b):
            out.add((a[: k + 1], b[: k + 1]))
    return out


def cycles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def dfs(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [])
    return found


def name(path):
    return "::".join(path) or "crate"


def main():
    problems = []
    for file in sorted(ROOT.glob("*/**/*.rs")):
        rel = file.relative_to(ROOT)
        # third_party: upstream crates as published (plus a small patch), not our layout.
        if rel.parts[0] in ("target", "interop", "third_party") or "node_modules" in rel.parts:
            continue
        lines = len(file.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{rel}: {lines} lines (at most {MAX_LINES})")
    main_lines = len((ROOT / "node/src/main.rs").read_text().splitlines())
    if main_lines >= MAX_MAIN_LINES:
        problems.append(f"node/src/main.rs: {main_lines} lines (under {MAX_MAIN_LINES})")

    for root in CRATE_ROOTS:
        modules = load_crate(ROOT / root)
        siblings = sibling_edges(references(modules))
        for cycle in cycles(siblings):
            problems.append(f"{root}: import cycle " + " -> ".join(name(m) for m in cycle))
        if root == "node/src/lib.rs":
            for a, b in [(("client",), ("server",)), (("server",), ("client",))]:
                if (a, b) in siblings:
                    problems.append(f"{root}: {name(a)} refers to {name(b)}")
        print(f"{root}: {len(modules)} modules, {len(siblings)} sibling dependencies, no cycle" if not cycles(siblings)
              else f"{root}: cycles found")

    for p in problems:
        print("layout:", p)
    print(f"layout: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
