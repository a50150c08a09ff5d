"""Every stage's dvc.yaml deps hold exactly the realmix/ code it runs, computed from the imports (ast, nothing
imported): a stage script calls `realmix.cli.main([<command>, ...])`; its code is the import closure of
realmix.cli, where the dispatchers (cli.main's branch for the command and pipeline's function of that name)
count only the lazy imports of that command, and every other module counts all of its imports, module- and
function-level. A dependency left out would let a change there skip rerunning the stage; one too many reruns
it for nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.helpers import ROOT, import_graph, module_files, parents

DISPATCHERS = {"realmix.cli", "realmix.pipeline"}  # they import each step's code inside the step


def stage_command(script: Path) -> str:
    """"train" for a stage script whose work is `main(["train", *sys.argv[1:]])`."""
    for node in ast.walk(ast.parse(script.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args
                and isinstance(node.args[0], ast.List) and isinstance(node.args[0].elts[0], ast.Constant)):
            return str(node.args[0].elts[0].value)
    raise AssertionError(f"{script}: no main([<command>, ...]) call")


def closure(command: str) -> set[str]:
    """The realmix modules a stage running `realmix <command>` imports."""
    graph = import_graph()
    seen: set[str] = set()
    todo = ["realmix.cli", *parents("realmix.cli")]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imp in graph[module]:
            if module in DISPATCHERS and imp.function is not None:
                if module == "realmix.pipeline" and imp.function != command:
                    continue
                if module == "realmix.cli" and (imp.function != "main" or imp.command not in (None, command)):
                    continue
            todo += [imp.target, *parents(imp.target)]
    return seen


def declared(deps: list[str]) -> set[str]:
    """The realmix/ files a stage's deps name (a folder: every .py below it)."""
    out: set[str] = set()
    for dep in deps:
        if dep.startswith("realmix"):
            path = ROOT / dep
            out |= {str(p.relative_to(ROOT)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
    return out


def test_every_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    files = {name: str(path.relative_to(ROOT)) for name, path in module_files().items()}
    problems = []
    for name, stage in stages.items():
        script = next(w for w in stage["cmd"].split() if w.startswith("stages/"))
        assert script in stage["deps"], f"dvc.yaml stage {name}: its script {script} is not among its deps"
        needed = {files[m] for m in closure(stage_command(ROOT / script))}
        have = declared(stage["deps"])
        if needed - have:
            problems.append(f"stage {name}: add {', '.join(sorted(needed - have))}")
        if have - needed:
            problems.append(f"stage {name}: remove {', '.join(sorted(have - needed))} (not imported)")
    assert not problems, "dvc.yaml deps do not match the code the stages import:\n" + "\n".join(problems)


def test_the_closure_follows_lazy_imports_per_command():
    """The rule on the real code: train reaches the Trainer through pipeline.train's lazy import and the
    evaluation history through inference; evaluate does not reach the training loop."""
    train, evaluate = closure("train"), closure("evaluate")
    assert {"realmix.train", "realmix.train.trainer", "realmix.inference", "realmix.algorithms"} <= train
    assert "realmix.evaluate" not in train and "realmix.preaugment" not in train
    assert "realmix.train" not in evaluate and "realmix.report" in evaluate
    assert "realmix.sources.digits" in closure("download")  # the readers' table (importlib) counts
