"""Mutation testing of the firmware (stdlib `ast`): how many one-token bugs do the fast tests catch?

mutants(source) lists every mutant of a module under the standard operators: comparison (== !=,
< <=, > >=, in / not in, is / is not), boolean (and / or, `not` removed), constant (an int + 1,
True / False, a non-empty str or bytes emptied), slice (a bound dropped), arithmetic (+ -, << >>,
& |) and statement deletion (a statement replaced by `pass`). Docstrings, imports and the text of
log lines and exception messages are left alone: no test could tell most of those mutants apart.
run() applies each mutant in a temporary copy of the tree (never the work tree), runs the given
tests there with a timeout per mutant, and counts a mutant killed when the tests fail or time out.
"""

import ast
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_CMP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
        ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
        ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
_MESSAGES = ("log", "DynregError", "ConfigError", "AssertionError")  # calls whose text is not mutated


class _Sites(ast.NodeTransformer):
    """Walks a module; numbers every mutation site; applies site `target` (or none when -1)."""

    def __init__(self, target=-1):
        self.target, self.n, self.done = target, 0, None
        self.quiet = 0  # > 0 inside a docstring-like or message context

    def _site(self, what, node):
        hit = self.n == self.target
        if hit:
            self.done = (getattr(node, "lineno", 0), what)
        self.n += 1
        return hit

    def visit_Call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in _MESSAGES:
            self.quiet += 1
            self.generic_visit(node)
            self.quiet -= 1
            return node
        return self.generic_visit(node)

    def visit_Import(self, node):
        return node

    visit_ImportFrom = visit_Import

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            if self._site("%s -> %s" % (type(op).__name__, _CMP[type(op)].__name__), node):
                node.ops[i] = _CMP[type(op)]()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site("%s -> %s" % (type(node.op).__name__, other.__name__), node):
            node.op = other()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site("not removed", node):
            return node.operand
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if type(node.op) in _BIN and self._site("%s -> %s" % (type(node.op).__name__,
                                                               _BIN[type(node.op)].__name__), node):
            node.op = _BIN[type(node.op)]()
        return node

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            if self._site("%r -> %r" % (v, not v), node):
                return ast.copy_location(ast.Constant(not v), node)
        elif isinstance(v, int):
            if self._site("%d -> %d" % (v, v + 1), node):
                return ast.copy_location(ast.Constant(v + 1), node)
        elif isinstance(v, (str, bytes)) and v and not self.quiet:
            if self._site("%r -> empty" % (v[:20],), node):
                return ast.copy_location(ast.Constant(v[:0]), node)
        return node

    def visit_JoinedStr(self, node):
        return node

    def visit_Slice(self, node):
        self.generic_visit(node)
        for bound in ("lower", "upper"):
            if getattr(node, bound) is not None and self._site("slice %s bound dropped" % bound, node):
                setattr(node, bound, None)
        return node

    def _body(self, body):
        out = []
        for i, stmt in enumerate(body):
            doc = i == 0 and isinstance(stmt, ast.Expr) and isinstance(getattr(stmt, "value", None), ast.Constant)
            if doc or isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Pass,
                                        ast.Global)):
                out.append(stmt if doc else self.visit(stmt))
                continue
            if self._site("statement deleted: %s" % type(stmt).__name__, stmt):
                out.append(ast.copy_location(ast.Pass(), stmt))
            else:
                out.append(self.visit(stmt))
        return out

    def generic_visit(self, node):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, field, self._body(body))
        for field, value in ast.iter_fields(node):
            if field in ("body", "orelse", "finalbody") and isinstance(value, list) and value \
                    and isinstance(value[0], ast.stmt):
                continue
            if isinstance(value, list):
                new = []
                for item in value:
                    if isinstance(item, ast.AST):
                        item = self.visit(item)
                        if item is None:
                            continue
                    new.append(item)
                value[:] = new
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node


def mutants(source):
    """[(line, description, mutated source)] of one module's source text."""
    tree = ast.parse(source)
    count = _Sites()
    count.visit(copy.deepcopy(tree))
    out = []
    for k in range(count.n):
        s = _Sites(k)
        mutated = ast.fix_missing_locations(s.visit(copy.deepcopy(tree)))
        line, what = s.done
        out.append((line, what, ast.unparse(mutated) + "\n"))
    return out


def _copy_tree(root, dest):
    """A copy of `root` to run mutants in: sources and build/deps, not .git or other build output."""
    def ignore(path, names):
        skip = {".git", "__pycache__", ".pytest_cache", ".hypothesis", "node_modules"}
        if os.path.abspath(path) == os.path.abspath(root):
            skip.add("build")
        return [n for n in names if n in skip]

    shutil.copytree(root, dest, symlinks=True, ignore=ignore)
    deps = os.path.join(root, "build", "deps")
    if os.path.isdir(deps):
        shutil.copytree(deps, os.path.join(dest, "build", "deps"), symlinks=True)


def _tests_pass(cwd, tests, timeout):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # a mutant must never run from a stale .pyc
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"] + tests,
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return proc.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the interpreters it started
        proc.wait()
        return False  # a mutant that hangs the tests is caught by their bound


def run(root, paths, tests, timeout=120, limit=None, jobs=1, report=print):
    """Mutate each file of `paths` (relative to `root`) in turn, `jobs` mutants at a time (each in its own
    copy of the tree); return {path: (killed, [(line, what) of survivors])}."""
    from concurrent.futures import ThreadPoolExecutor
    from queue import Queue

    results = {}
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        trees = Queue()
        for j in range(jobs):
            work = os.path.join(tmp, "tree%d" % j)
            _copy_tree(root, work)
            trees.put(work)
        t0 = time.monotonic()
        if not _tests_pass(os.path.join(tmp, "tree0"), tests, timeout * 3):
            raise RuntimeError("the tests fail on the unmutated tree: %s" % " ".join(tests))
        report("mutate: baseline passes (%.0f s)" % (time.monotonic() - t0))

        def one(path, source):
            work = trees.get()
            target = os.path.join(work, path)
            with open(target) as f:
                original = f.read()
            try:
                with open(target, "w") as f:
                    f.write(source)
                return _tests_pass(work, tests, timeout)
            finally:
                with open(target, "w") as f:
                    f.write(original)
                trees.put(work)

        with ThreadPoolExecutor(jobs) as pool:
            for path in paths:
                with open(os.path.join(root, path)) as f:
                    found = mutants(f.read())[:limit]
                passed = list(pool.map(lambda m: one(path, m[2]), found))
                survivors = [(line, what) for (line, what, _), p in zip(found, passed) if p]
                for line, what in survivors:
                    report("mutate: %s:%d %s SURVIVED" % (path, line, what))
                killed = len(found) - len(survivors)
                # every kill must be the mutant's doing, not a broken environment (a venv being rebuilt)
                if killed and not _tests_pass(os.path.join(tmp, "tree0"), tests, timeout * 3):
                    raise RuntimeError("the tests now fail on the unmutated tree: results of %s void" % path)
                results[path] = (killed, survivors)
                report("mutate: %s: %d/%d killed (%.0f %%, %.0f s so far)" % (
                    path, killed, len(found), 100.0 * killed / len(found) if found else 100, time.monotonic() - t0))
    return results
