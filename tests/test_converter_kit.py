"""llama.cpp's converter kit: from the same llama-cpp-python release, cached, never committed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from phibox.device.errors import ConfigError
from phibox.export import llama_kit


def fake_sdist(path: Path, version: str, extra: dict[str, bytes] | None = None) -> Path:
    """A llama-cpp-python-shaped sdist holding a converter, its packages and some noise."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    members = {
        prefix + "convert_hf_to_gguf.py": b"print('converter')\n",
        prefix + "conversion/__init__.py": b"",
        prefix + "gguf-py/gguf/__init__.py": b"",
        prefix + "ggml/src/ggml.c": b"int x;\n",
        f"llama_cpp_python-{version}/../../escape.py": b"evil\n",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_installed_kit_matches_the_runtime(converter_kit) -> None:
    assert converter_kit.llama_cpp_python == llama_kit.runtime_version()
    assert converter_kit.script.is_file()
    assert (converter_kit.root / "gguf-py" / "gguf" / "__init__.py").is_file()


def test_extract_takes_only_the_converter(tmp_path: Path) -> None:
    version = llama_kit.runtime_version()
    sdist = fake_sdist(tmp_path / f"llama_cpp_python-{version}.tar.gz", version)
    kit = llama_kit.extract_kit(sdist, tmp_path / "kit")
    files = sorted(p.relative_to(kit.root).as_posix() for p in kit.root.rglob("*") if p.is_file())
    assert files == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not (tmp_path / "escape.py").exists()


def test_sdist_of_another_version_is_refused(tmp_path: Path) -> None:
    sdist = fake_sdist(tmp_path / "llama_cpp_python-0.0.1.tar.gz", "0.0.1")
    with pytest.raises(ConfigError, match=r"same llama\.cpp the device runs"):
        llama_kit.extract_kit(sdist, tmp_path / "kit")


def test_missing_kit_says_how_to_set_it_up(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(llama_kit.ENV_SRC, raising=False)
    with pytest.raises(ConfigError, match="phibox converter fetch"):
        llama_kit.find_kit(cache_root=tmp_path)


def test_local_source_folder_via_environment(tmp_path: Path, monkeypatch, converter_kit) -> None:
    monkeypatch.setenv(llama_kit.ENV_SRC, str(converter_kit.root))
    assert llama_kit.find_kit(cache_root=tmp_path).root == converter_kit.root
    incomplete = tmp_path / "llama.cpp"
    incomplete.mkdir()
    monkeypatch.setenv(llama_kit.ENV_SRC, str(incomplete))
    with pytest.raises(ConfigError, match=r"has no convert_hf_to_gguf\.py"):
        llama_kit.find_kit(cache_root=tmp_path)
