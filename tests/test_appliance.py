"""The offline appliance: `phibox appliance build` writes one signed tar; its install.sh installs
phibox from that tar alone, with the network cut (a network namespace), and refuses a changed tar
before it installs anything; its llama.cpp runs on older CPUs (emulated by qemu-user)."""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from test_serve import free_port
from unit_checks import exposure, needs_systemd, verify_errors

from phibox.device.bundle import generate_key, load_private_key, load_public_key
from phibox.device.errors import ConfigError
from phibox.export.appliance import CONTEXT, MANIFEST, SIGNATURE
from phibox.export.wheelhouse import Target, check_wheelhouse

TESTS = Path(__file__).resolve().parent
BASE_PYTHON = str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _can_cut_network() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_netns = pytest.mark.skipif(not _can_cut_network(),
                                 reason="`unshare -n` is not allowed here (needs root and util-linux)")
needs_x86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the emulated-CPU test is for x86_64")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                                reason="qemu-x86_64 is not installed (Debian package qemu-user)")


def offline(*cmd: str) -> list[str]:
    """A command run in a new network namespace: no interfaces but loopback, brought up."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *cmd]


@pytest.fixture(scope="module")
def appliance(admin_keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("appliance")
    result = subprocess.run([sys.executable, "-m", "phibox.device.cli", "appliance", "build", "--out", str(out),
                             "--key", str(admin_keys[0])], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    print(result.stdout)
    return next(out.glob("phibox-appliance-*.tar"))


@pytest.fixture(scope="module")
def unpacked(appliance: Path, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(appliance) as tar:
        tar.extractall(dest, filter="data")
    return dest / appliance.name.removesuffix(".tar")


def install(folder: Path, root: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess:
    """install.sh from an unpacked appliance, into ROOT's prefix/state/config, with no network."""
    cmd = ["bash", str(folder / "install.sh"), "--key", str(pub), "--no-systemd", "--python", BASE_PYTHON,
           "--prefix", str(root / "opt"), "--state-dir", str(root / "state"), "--config-dir", str(root / "etc"),
           "--unit-dir", str(root / "units"), "--user", "root", *extra]
    return subprocess.run(offline(*cmd), capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def installed(unpacked: Path, admin_keys, tmp_path_factory) -> Path:
    if not _can_cut_network():
        pytest.skip("`unshare -n` is not allowed here (needs root and util-linux)")
    root = tmp_path_factory.mktemp("kiosk")
    started = time.monotonic()
    result = install(unpacked, root, admin_keys[1])
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"offline install took {time.monotonic() - started:.0f} s\n{result.stdout}")
    (root / "install.log").write_text(result.stdout + result.stderr)
    return root


def copy_of(folder: Path, dest: Path) -> Path:
    """A cheap copy (hard links); files to be changed must be rewritten, not edited in place."""
    shutil.copytree(folder, dest, copy_function=os.link)
    return dest


def resign(folder: Path, key: Path, edit) -> None:
    """Edit appliance.json and sign it again with KEY (what a build with that change would write)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).write_bytes(data)
    (folder / SIGNATURE).unlink()
    (folder / SIGNATURE).write_text(base64.b64encode(load_private_key(key).sign(CONTEXT + data)).decode())


def test_the_tar_is_signed_and_holds_one_platforms_device_wheels_and_a_portable_llama(
        appliance: Path, unpacked: Path, admin_keys) -> None:
    manifest = json.loads((unpacked / MANIFEST).read_text())
    signature = base64.b64decode((unpacked / SIGNATURE).read_text())
    load_public_key(admin_keys[1]).verify(signature, CONTEXT + (unpacked / MANIFEST).read_bytes())
    assert manifest["platform"] == f"linux-{platform.machine()}" and appliance.name.endswith(
        f"-{manifest['platform']}.tar")
    wheels = {name.split("/")[1].split("-")[0].lower() for name in manifest["files"] if name.startswith("wheels/")}
    assert {"phibox", "llama_cpp_python", "onnxruntime", "onnxruntime_genai", "flask", "waitress", "cheroot",
            "sqlite_vec", "tokenizers", "numpy", "cryptography"} <= wheels
    assert not wheels & {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "optimum"}
    assert {"install.sh", "README.md", "constraints.txt", "units/phibox.service", "units/phibox-pull.service",
            "units/phibox-pull.timer"} <= set(manifest["files"])
    if platform.machine() == "x86_64":
        assert {"x64", "sse42", "haswell", "skylakex"} <= set(manifest["llama_cpp"]["cpu_variants"])


@needs_netns
def test_offline_install_passes_doctor_installs_a_bundle_and_answers_over_http(
        installed: Path, tiny_bundle_file: Path) -> None:
    log = (installed / "install.log").read_text()
    assert "signature and" in log and "FAIL" not in log and "portable build, variant" in log
    current = (installed / "opt" / "current").resolve()
    assert current.parent == installed / "opt" / "venvs"
    assert (installed / "etc" / "keys" / "admin.pub").stat().st_mode & 0o777 == 0o644
    assert (installed / "etc").stat().st_mode & 0o777 == 0o750 and (installed / "etc" / "serve.toml").exists()
    assert f"{installed / 'opt' / 'current'}/bin/phibox serve" in (installed / "units" / "phibox.service").read_text()
    no_torch = subprocess.run([str(current / "bin" / "python"), "-c",
                               "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('transformers'))"],
                              capture_output=True, text=True)
    assert no_torch.stdout.strip() == "None None"

    result = subprocess.run(
        offline(str(current / "bin" / "python"), str(TESTS / "appliance_kiosk.py"), str(installed / "opt"),
                str(installed / "state"), str(tiny_bundle_file), str(free_port())),
        capture_output=True, text=True, timeout=600, env={**os.environ, "PHIBOX_CONFIG_DIR": str(installed / "etc")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200 and answer["page_status"] == 200 and answer["page_bytes"] > 1000
    assert answer["content"].strip() and answer["completion_tokens"] > 0
    assert any("press-manual.md" in source for source in answer["passages"])  # retrieval by the installed embedder


@needs_netns
@pytest.mark.parametrize("change, message", [
    ("tamper", "does not match appliance.json"),
    ("remove", "is missing"),
    ("add", "is not in appliance.json"),
    ("other-key", "is not signed by"),
    ("other-machine", "this appliance is for"),
])
def test_a_changed_appliance_is_refused_before_anything_is_installed(
        unpacked: Path, admin_keys, tmp_path: Path, change: str, message: str) -> None:
    folder = copy_of(unpacked, tmp_path / "appliance")
    wheels = sorted((folder / "wheels").glob("*.whl"))
    phibox_wheel = next(w for w in wheels if w.name.startswith("phibox-"))
    if change == "tamper":
        data = bytearray(phibox_wheel.read_bytes())
        data[len(data) // 2] ^= 0xFF
        phibox_wheel.unlink()
        phibox_wheel.write_bytes(bytes(data))
    elif change == "remove":
        next(w for w in wheels if w.name.startswith("onnxruntime-")).unlink()
    elif change == "add":
        (folder / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(phibox_wheel.read_bytes())
    elif change == "other-key":
        generate_key(tmp_path / "other.key")
        resign(folder, tmp_path / "other.key", lambda m: None)
    else:
        resign(folder, admin_keys[0], lambda m: m.update(machine="aarch64", platform="linux-aarch64"))
    result = install(folder, tmp_path / "kiosk", admin_keys[1])
    assert result.returncode != 0 and message in result.stderr, result.stdout + result.stderr
    assert "nothing was installed" in result.stderr
    assert not (tmp_path / "kiosk" / "opt").exists() and not (tmp_path / "kiosk" / "state").exists()


@needs_netns
def test_an_upgrade_keeps_state_and_the_previous_environment_and_a_broken_one_changes_nothing(
        installed: Path, unpacked: Path, admin_keys, tmp_path: Path) -> None:
    opt = installed / "opt"
    before = (opt / "current").resolve()
    (installed / "state" / "marker").write_text("the plant's manuals")
    time.sleep(1.1)  # environments are named by the second they were made
    result = install(unpacked, installed, admin_keys[1])
    assert result.returncode == 0, result.stdout + result.stderr
    after = (opt / "current").resolve()
    assert after != before and before.is_dir() and (installed / "state" / "marker").read_text() == "the plant's manuals"
    assert (installed / "etc" / "keys" / "admin.pub").exists()

    broken = copy_of(unpacked, tmp_path / "broken")  # signed, but built without a wheel phibox needs
    pypdf = next((broken / "wheels").glob("pypdf-*.whl"))
    pypdf.unlink()
    resign(broken, admin_keys[0], lambda m: m["files"].pop(f"wheels/{pypdf.name}"))
    time.sleep(1.1)
    result = install(broken, installed, admin_keys[1])
    assert result.returncode != 0 and "nothing was changed" in result.stderr, result.stdout + result.stderr
    assert (opt / "current").resolve() == after
    assert sorted(p.name for p in (opt / "venvs").iterdir()) == sorted([before.name, after.name])


def test_the_build_refuses_another_platforms_wheels_the_torch_stack_and_a_native_llama(tmp_path: Path) -> None:
    target = Target(machine="x86_64", python="3.11")

    def folder(*names: str, llama_variants: bool = True) -> Path:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        out.mkdir()
        for name in ("phibox-0.1.0-py3-none-any.whl", *names):
            (out / name).write_bytes(b"")
        with zipfile.ZipFile(out / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl", "w") as zf:
            zf.writestr("llama_cpp/lib/libllama.so", b"")
            if llama_variants:
                zf.writestr("llama_cpp/lib/libggml-cpu-sse42.so", b"")
        return out

    assert len(check_wheelhouse(folder("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl"), target)) == 3
    with pytest.raises(ConfigError, match="is for aarch64, the appliance is for x86_64"):
        check_wheelhouse(folder("numpy-2.4.6-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"), target)
    with pytest.raises(ConfigError, match="never installs torch"):
        check_wheelhouse(folder("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"), target)
    with pytest.raises(ConfigError, match="not the portable build"):
        check_wheelhouse(folder(llama_variants=False), target)


@needs_netns
@needs_x86
@needs_qemu
def test_the_packaged_llama_cpp_generates_the_same_text_on_older_emulated_cpus(
        installed: Path, tiny_gguf: Path) -> None:
    site = next((installed / "opt" / "current" / "lib").glob("python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    script = [BASE_PYTHON, "-s", str(TESTS / "appliance_generate.py"), str(tiny_gguf)]

    def run(*prefix: str) -> dict:
        result = subprocess.run([*prefix, *script], capture_output=True, text=True, timeout=900, env=env, cwd=site)
        assert result.returncode == 0, f"{prefix}: exit {result.returncode}\n{result.stderr[-3000:]}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    native = run()
    assert native["portable"] and native["tokens"] > 0
    # Nehalem: x86-64-v2 (SSE4.2, no AVX); Haswell: AVX2 and FMA, no AVX-512. -cpu ...,-avx512f etc. are
    # implied by the model; a build-machine instruction would end the process with SIGILL (exit 132).
    for model, variant in (("Nehalem", "sse42"), ("Haswell", "haswell")):
        emulated = run("qemu-x86_64", "-cpu", model)
        assert emulated["variant"] == variant
        assert emulated["text"] == native["text"], (model, emulated["text"], native["text"])


@needs_netns
def test_the_portable_llama_cpp_loads_its_variants_under_memory_deny_write_execute(
        installed: Path, tiny_gguf: Path) -> None:
    """phibox.service sets MemoryDenyWriteExecute=yes: the variant loading (dlopen of every
    libggml-cpu-*.so to score it) and generation must work under the kernel's W^X switch."""
    python = installed / "opt" / "current" / "bin" / "python"
    result = subprocess.run([str(python), str(TESTS / "appliance_generate.py"), str(tiny_gguf), "--wx"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["portable"] and answer["tokens"] > 0


@needs_systemd
@needs_netns
def test_the_installed_service_unit_verifies_and_scores_at_most_2(installed: Path) -> None:
    units = installed / "units"
    assert verify_errors(units, ("phibox.service", "phibox-pull.service", "phibox-pull.timer")) == ""
    assert exposure(units / "phibox.service") <= 2.0


@needs_netns
def test_uninstall_keeps_the_state_directory_unless_purged(installed: Path, unpacked: Path) -> None:
    args = ["--no-systemd", "--prefix", str(installed / "opt"), "--state-dir", str(installed / "state"),
            "--config-dir", str(installed / "etc"), "--unit-dir", str(installed / "units"), "--user", "root"]
    (installed / "state" / "marker").write_text("the plant's manuals")
    uninstall = ["bash", str(unpacked / "install.sh"), "--uninstall", *args]
    result = subprocess.run(uninstall, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not (installed / "opt").exists() and not (installed / "etc").exists()
    assert not (installed / "units" / "phibox.service").exists() and (installed / "state" / "marker").exists()
    again = subprocess.run(uninstall, capture_output=True, text=True)
    assert again.returncode != 0 and "no phibox appliance install" in again.stderr


def test_two_builds_of_the_portable_wheel_at_once_compile_it_once(tmp_path: Path, monkeypatch) -> None:
    import threading

    from phibox.export import portable_llama

    builds = []

    def slow_build(version: str, folder: Path, log) -> Path:
        builds.append(version)
        time.sleep(0.5)  # the second caller arrives while this one compiles
        folder.mkdir()
        wheel = folder / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl"
        wheel.write_bytes(b"wheel")
        return wheel

    monkeypatch.setattr(portable_llama, "_build", slow_build)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(portable_llama.portable_wheel("0.3.36", cache=tmp_path)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert builds == ["0.3.36"] and len(got) == 2 and got[0] == got[1] and got[0].read_bytes() == b"wheel"
