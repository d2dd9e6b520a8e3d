"""The mutation tool (tools/mutate, `make mutate`) on a toy module: its operators and its verdicts."""

from tools.mutate import mutants, run

TOY = '''def clamp(x, hi):
    """At most hi."""
    if x > hi:
        return hi
    return x
'''
TOY_TEST = '''from toy import clamp


def test_clamp():
    assert clamp(5, 3) == 3 and clamp(1, 3) == 1
'''


def test_operators():
    src = 'def f(a, b):\n    log("kept text")\n    return a and not b[1:2] == "x" or a + 1\n'
    found = sorted(what for _, what, _ in mutants(src))
    assert found == sorted(["statement deleted: Expr", "statement deleted: Return", "And -> Or", "Or -> And",
                            "not removed", "Eq -> NotEq", "slice lower bound dropped", "slice upper bound dropped",
                            "1 -> 2", "1 -> 2", "2 -> 3", "'x' -> empty", "Add -> Sub"]), found
    for _, _, source in mutants(src):
        compile(source, "mutant", "exec")


def test_run_kills_and_reports_survivors(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the toy needs no plugin: a third of the time
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "test_toy.py").write_text(TOY_TEST)
    lines = []
    results = run(str(tmp_path), ["toy.py"], ["test_toy.py"], timeout=60, report=lines.append)
    # x > hi -> x >= hi is equivalent (clamp(3, 3) is 3 either way): the one survivor
    assert results == {"toy.py": (3, [(3, "Gt -> GtE")])}, lines
    assert (tmp_path / "toy.py").read_text() == TOY  # mutants ran in a copy, never in the tree itself
