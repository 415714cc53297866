"""The image-reference policy: confinement to the roots (symlinks followed), allowed URI schemes, no fsspec
chains; and reads that refuse anything but a regular file before opening it."""

import os
import pickle
import socket
import threading
import time

import pytest
from PIL import Image

from orchestrator.config import ConfigError, load_config
from orchestrator.data.images import ImageError, read_image_bytes
from orchestrator.data.refs import ImagePolicy
from orchestrator.data.schema import resolve_ref


@pytest.fixture
def tree(tmp_path):
    """data/ (the data file's folder) with an image, outside/ with a secret, and links between them."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "img").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (20, 20), "red").save(data / "img" / "a.png")
    Image.new("RGB", (20, 20), "black").save(outside / "secret.png")
    os.symlink(outside / "secret.png", data / "img" / "escape.png")
    os.symlink(outside, data / "img" / "outdir")
    os.symlink("a.png", data / "img" / "alias.png")
    return data, outside


def check(policy: ImagePolicy, ref: str, base) -> str:
    return policy.check(resolve_ref(ref, str(base)), str(base))


@pytest.mark.parametrize("ref", ["img/a.png", "img/alias.png", "./img/../img/a.png"])
def test_paths_inside_the_data_folder_resolve_to_real_paths(tree, ref):
    data, _ = tree
    assert check(ImagePolicy(), ref, data) == str((data / "img" / "a.png").resolve())


@pytest.mark.parametrize("ref, words", [
    ("../outside/secret.png", "resolves outside the data file's folder"),
    ("img/escape.png", "resolves outside"),  # a symlink out of the root
    ("img/outdir/secret.png", "resolves outside"),  # a symlinked folder out of the root
    ("/etc/hostname", "resolves outside"),
    ("file:///etc/hostname", "URI scheme 'file' is not allowed (data.allowed_schemes: none: local files only)"),
    ("http://127.0.0.1:9/a.png", "URI scheme 'http' is not allowed"),
    ("https://example.com/a.png", "URI scheme 'https' is not allowed"),
    ("s3://bucket/a.png", "URI scheme 's3' is not allowed"),
    ("simplecache::s3://bucket/a.png", "fsspec chains"),
    ("img/a.png::x", "fsspec chains"),
])
def test_refused_references(tree, ref, words):
    data, _ = tree
    with pytest.raises(ImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check(ImagePolicy(), ref, data)


def test_absolute_paths_inside_the_root_are_fine(tree):
    data, outside = tree
    assert check(ImagePolicy(), str(data / "img" / "a.png"), data).endswith("/data/img/a.png")
    with pytest.raises(ImageError, match="resolves outside"):
        check(ImagePolicy(), str(outside / "secret.png"), data)


def test_image_roots_and_listed_schemes(tree, tmp_path):
    data, outside = tree
    cfg = load_config(None, [f"data.source={data}", f"data.image_roots=[{data}, {outside}]",
                             "data.allowed_schemes=[file, s3]"])
    policy = ImagePolicy.from_config(cfg.data)
    assert pickle.loads(pickle.dumps(policy)) == policy  # it travels to Ray tasks in fn_kwargs
    assert check(policy, "img/escape.png", data) == str((outside / "secret.png").resolve())
    assert check(policy, f"file://{data}/img/a.png", data) == str((data / "img" / "a.png").resolve())
    assert check(policy, "s3://bucket/a.png", data) == "s3://bucket/a.png"
    with pytest.raises(ImageError, match="outside data.image_roots"):  # file:// is confined like a local path
        check(policy, "file:///etc/hostname", data)
    with pytest.raises(ImageError, match="must name a local absolute path"):
        check(policy, "file://otherhost/etc/hostname", data)
    with pytest.raises(ImageError, match="scheme 'http'"):
        check(policy, "http://127.0.0.1:9/a.png", data)
    with pytest.raises(ImageError, match="fsspec chains"):
        check(policy, "simplecache::file:///etc/hostname", data)
    with pytest.raises(ConfigError, match="local folders only"):
        ImagePolicy.from_config(load_config(None, ["data.source=x", "data.image_roots=[s3://b/x]"]).data)


def test_default_schemes_are_those_of_the_source():
    s3 = ImagePolicy.from_config(load_config(None, ["data.source=[s3://b/train, gs://c/x.jsonl, local/y]"]).data)
    assert s3.schemes == {"s3", "gs"} and s3.roots is None
    assert check(s3, "img/a.png", "s3://b/train") == "s3://b/train/img/a.png"
    with pytest.raises(ImageError, match="remote data file, and data.image_roots is not set"):
        check(s3, "/etc/hostname", "s3://b/train")
    assert ImagePolicy.from_config(load_config(None, ["data.source=local/y"]).data).schemes == frozenset()
    file_source = ImagePolicy.from_config(load_config(None, ["data.source=file:///srv/leaf"]).data)
    assert check(file_source, "img/a.png", "file:///srv/leaf") == os.path.realpath("/srv/leaf/img/a.png")
    with pytest.raises(ImageError, match="resolves outside"):
        check(file_source, "file:///etc/hostname", "file:///srv/leaf")


# ---- reads: only regular files, decided from stat before anything is opened -------------------------------


def test_fifo_socket_directory_and_device_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.png"))
        cases = [("pipe.png", "FIFO"), ("dir.png", "directory"), ("s.png", "socket")]
        for name, kind in cases:
            done = []
            t = threading.Thread(target=lambda n=name: done.append(_reason(str(tmp_path / n))), daemon=True)
            t.start()
            t.join(10)
            assert done == [f"{tmp_path / name}: not a regular file: {kind}"]
    finally:
        sock.close()
    assert _reason("/dev/null") == "/dev/null: not a regular file: character device"
    start = time.perf_counter()
    assert "not a regular file" in _reason("/dev/zero") and time.perf_counter() - start < 1


def _reason(path: str) -> str:
    try:
        read_image_bytes(path, 1000)
    except ImageError as e:
        return str(e)
    return "read"
