"""The config loader (errors name the field and file) and atomic fsspec writes."""

import dataclasses

import pytest

from raysae import storage
from raysae.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    widths: tuple[int, ...] = (16,)
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    lam: float = 1.0
    mode: str | None = None


def test_nested_errors_name_the_dotted_field():
    with pytest.raises(ConfigError, match=r"^inner\.widths\[1\]: expected an integer, got 'a'"):
        from_dict(Outer, {"inner": {"widths": [1, "a"]}})
    with pytest.raises(ConfigError, match=r"^inner\.nmae: unknown key \(allowed: name, widths\)"):
        from_dict(Outer, {"inner": {"nmae": "y"}})
    with pytest.raises(ConfigError, match=r"^inner: expected a mapping"):
        from_dict(Outer, {"inner": 3})


def test_round_trip_and_overrides():
    o = from_dict(Outer, {"inner": {"widths": [8, 16]}, "lam": 2})
    assert o == Outer(inner=Inner(widths=(8, 16)), lam=2.0)
    data = to_dict(o)
    apply_overrides(data, ["lam=0.5", "inner.name=y", "mode=fast"])
    assert from_dict(Outer, data) == Outer(inner=Inner(widths=(8, 16), name="y"), lam=0.5, mode="fast")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lam"])


def test_load_yaml_names_the_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("lam: 3\ninner: {widths: [4]}\n")
    assert load_yaml(Outer, str(p)).inner.widths == (4,)
    assert load_yaml(Outer, str(p), ["lam=5"]).lam == 5.0
    p.write_text("lam: [\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: not valid YAML"):
        load_yaml(Outer, str(p))
    p.write_text("lamda: 3\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: lamda: unknown key"):
        load_yaml(Outer, str(p))
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_yaml(Outer, str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("base", ["local", "memory"])
def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path, base):
    url = str(tmp_path / "d" / "f.bin") if base == "local" else "memory://atomic/d/f.bin"
    storage.write_bytes_atomic(url, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(url) as f:
            f.write(b"partial")
            raise RuntimeError("killed mid-write")
    assert storage.read_bytes(url) == b"old"
    parent = url.rsplit("/", 1)[0]
    assert storage.listdir(parent) == ["f.bin"]  # no temp file left behind
    with storage.atomic_write(url) as f:
        f.write(b"new")
    assert storage.read_bytes(url) == b"new"
