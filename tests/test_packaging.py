"""``pip install featcache`` installs one import name, and its three commands run from a wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_featcache_and_its_commands_run(tmp_path):
    dist = tmp_path / "dist"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    (wheel,) = dist.glob("featcache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"featcache", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    for module in ("extractor/cli.py", "trainer/cli.py", "shared/cache/_reader.py", "shared/inspection/cli.py"):
        assert f"featcache/{module}" in names
    assert not any(n.startswith(("tests/", "bench/", "data/")) for n in names)

    # A fresh venv with only the wheel; the dependencies come from this environment through a .pth
    # file, so that the test needs no network and does not reinstall TensorFlow.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))]
    (site / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, cwd=tmp_path)
    for command in ("featcache-extract", "featcache-train", "featcache-inspect"):
        r = subprocess.run([str(venv / "bin" / command), "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0 and "Usage" in r.stdout, (command, r.stderr)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import featcache, featcache.shared.cache; print(featcache.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in where
    for name in ("shared", "extractor", "trainer"):
        assert not (site / name).exists()
