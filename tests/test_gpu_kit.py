"""The GPU check (benchmarks/gpu/) stays runnable on a GPU machine whose image lacks some of the
project's packages: what it imports is in that image or among the wheels it carries, and the
wheels are the versions the project pins."""

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu"
# The modules the check runs: every module of the package, and the tests and benchmarks it names.
ENTRY_POINTS = ["test_render_triton", "test_render_gaussians", "test_render_mesh", "test_cuda", "render",
                "render_profile", "joint_step", "synthetic_stages"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_check_script_parses():
    subprocess.run(["bash", "-n", str(KIT / "check.sh")], check=True)
    subprocess.run(["bash", "-n", str(KIT / "fetch_wheels.sh")], check=True)


def test_wheels_are_the_pinned_versions():
    pins = dict(line.split("==") for line in listed(ROOT / "requirements.txt") if "==" in line)
    pins = {normalized(k): v for k, v in pins.items()}
    for line in listed(KIT / "wheels.txt"):
        name, version = line.split("==")
        if normalized(name) in pins:
            pinned = pins[normalized(name)]
            assert pinned == version, f"wheels.txt pins {line}, requirements.txt {pinned}"


def test_what_the_check_imports_is_on_the_gpu_machine_or_carried():
    paths = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    code = (f"import sys, json, importlib, pkgutil, mega; sys.path[:0] = {paths!r}\n"
            "for m in pkgutil.walk_packages(mega.__path__, 'mega.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            f"for m in {ENTRY_POINTS!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    top_level = json.loads(result.stdout.strip().splitlines()[-1])
    owners = importlib.metadata.packages_distributions()
    available = {normalized(n) for n in listed(KIT / "device_packages.txt")}
    available |= {normalized(line.split("==")[0]) for line in listed(KIT / "wheels.txt")}
    missing = sorted({normalized(d) for name in top_level for d in owners.get(name, [])
                      if normalized(d) not in available and normalized(d) != "mega"})
    assert not missing, f"the GPU check imports {missing}: add them to benchmarks/gpu/wheels.txt"
