"""tools/ holds command-line programs: no file there shadows a standard-library module (running one as a script puts
tools/ first on sys.path, and `python tools/bench_bus.py` once died in dataclasses on tools/inspect.py), and no program
imports another (shared code lives in a package: edgeml/, compiled/, ipc/)."""
import ast
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_no_tool_shadows_the_standard_library():
  shadowing = sorted(p.name for p in TOOLS.glob("*.py") if p.stem in sys.stdlib_module_names)
  assert not shadowing, shadowing


def test_a_tool_runs_as_a_script():
  done = subprocess.run([sys.executable, str(TOOLS / "bench_bus.py"), "--help"], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_no_tool_imports_another():
  found = []
  for path in TOOLS.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tools" else [node.module]
      found += [(path.name, n) for n in names if n.startswith("tools.")]
  assert not found, found
