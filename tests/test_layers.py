"""The house rule: r1lab's modules form layers, and a module imports only from its own layer or the ones
below it, with no cycle anywhere (function-level imports count too). A new upward import or cycle fails
here, naming the edge. The layers, bottom up, are the README's Layout section."""
import ast
from pathlib import Path

import r1lab

LAYERS = [  # (layer, module prefixes); a module belongs to the first layer with a matching prefix
    ("core", ["r1lab", "r1lab.types", "r1lab.config", "r1lab.data", "r1lab.checkpoint", "r1lab.metrics",
              "r1lab.runlock"]),
    ("runtime", ["r1lab.allocator", "r1lab.distributed", "r1lab.hardware", "r1lab.threads"]),
    ("text", ["r1lab.templates", "r1lab.streaming", "r1lab.tools", "r1lab.sandbox", "r1lab.sandbox_jail"]),
    ("tasks", ["r1lab.tasks"]),
    ("rewards", ["r1lab.rewards"]),
    ("rollout", ["r1lab.rollout", "r1lab.models"]),
    ("train", ["r1lab.training", "r1lab.algorithms.losses", "r1lab.algorithms.sequences", "r1lab.algorithms.head_logprobs",
               "r1lab.algorithms.tied_lookup", "r1lab.algorithms.grpo", "r1lab.algorithms.sft", "r1lab.algorithms.compete", "r1lab.algorithms.phases",
               "r1lab.algorithms.diagnostics", "r1lab.algorithms.prompt_pool"]),
    ("stages", ["r1lab.algorithms", "r1lab.evaluate", "r1lab.cold_start"]),
    ("app", ["r1lab.cli", "r1lab.cli_parser", "r1lab.__main__", "r1lab.pipeline", "r1lab.experiment", "r1lab.report", "r1lab.serve",
             "r1lab.llm", "r1lab.doctor", "r1lab.trl_names"]),
]
ROOT = Path(r1lab.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("r1lab",) + path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    """The index of the module's layer: the longest matching prefix decides (r1lab.algorithms.grpo is train,
    r1lab.algorithms.rejection stages)."""
    best = max((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".") or module.startswith(prefix + "_"))
    return best[1]


def imports(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the r1lab modules it imports anywhere in its file (a package's __init__ when it imports a name)."""
    edges = {}
    for name, path in found.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "r1lab":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in found else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "r1lab"}
        edges[name] = {t for t in targets if t in found and t != name}
    return edges


def test_every_module_has_a_layer():
    for name in modules():
        assert layer(name) >= 0, name


def upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
            for a, targets in sorted(edges.items()) for b in sorted(targets) if layer(b) > layer(a)]


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Each cycle met by a depth-first walk, as 'a -> b -> a'."""
    state, found = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward(imports(modules())) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(imports(modules())) == []


def test_the_checks_find_what_they_look_for():
    """The checker itself, on a made-up graph with one cycle and one upward import."""
    made_up = {"r1lab.config": {"r1lab.rollout"}, "r1lab.rollout": {"r1lab.training"}, "r1lab.training": {"r1lab.config"}}
    assert cycles(made_up) == ["r1lab.config -> r1lab.rollout -> r1lab.training -> r1lab.config"]
    assert upward(made_up) == ["r1lab.config (core) -> r1lab.rollout (rollout)",
                               "r1lab.rollout (rollout) -> r1lab.training (train)"]
    assert layer("r1lab.algorithms.grpo") == 6 and layer("r1lab.algorithms.rejection") == 7
    assert layer("r1lab.serve_request") == 8 and layer("r1lab") == 0
