"""Downloads (backprop.data.sources) through pooch's HTTP downloader, and what each optional extra brings.

The mirrors are a local HTTPS server (`serving`) with a certificate made for this run by the
`openssl` command and trusted through REQUESTS_CA_BUNDLE, so the real downloader runs (TLS,
redirects, streaming) without the internet. Found files need neither the network nor pooch.
"""

import atexit
import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import backprop as bp
from backprop.data import DataError, sources
from backprop.data.mnist import FASHION_MIRRORS, MNIST_MIRRORS
from backprop.errors import ConfigError, MissingDependency

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _certificate() -> tuple[str, str]:
    """(certificate, key) files of a self-signed certificate for 127.0.0.1, made once per process."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command, which makes the test server's certificate, is not installed")
    folder = tempfile.mkdtemp(prefix="backprop-tls-")
    atexit.register(shutil.rmtree, folder, True)
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=backprop test server",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; /to-http/NAME redirects to plain http, /cut/NAME sends half of NAME."""

    def do_GET(self):
        if self.path.startswith("/to-http/"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/{self.path[9:]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/cut/"):
            data = Path(self.directory, self.path[5:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder, monkeypatch):
    """`https://127.0.0.1:PORT/`, serving `folder` while the block runs (requests told to trust it)."""
    pytest.importorskip("pooch", reason='downloads need pooch: pip install "backprop[data]"')
    cert, key = _certificate()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=os.fspath(folder)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache folder of this test's toy dataset (nothing in $BACKPROP_DATA_DIR)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BACKPROP_DATA_DIR", raising=False)
    return tmp_path / "cache" / "backprop" / "toy"


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """The URL of a local HTTPS mirror serving `good/f.gz` and `bad/f.gz`, and the good file's content."""
    content = b"some dataset bytes"
    for name, data in [("good", content), ("bad", b"tampered")]:
        (tmp_path / "mirror" / name).mkdir(parents=True)
        (tmp_path / "mirror" / name / "f.gz").write_bytes(gzip.compress(data))
    with serving(tmp_path / "mirror", monkeypatch) as url:
        yield url, content


def _md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def _no_pooch(monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)  # import pooch now raises ImportError


def test_a_download_is_verified_lands_in_the_cache_and_is_found_there_without_pooch(mirror, cache, monkeypatch, capfd):
    url, content = mirror
    path, got = sources.fetch("toy", "f.gz", _md5(content), [url + "good/"])
    assert got == content and path == cache / "f.gz" and sorted(os.listdir(cache)) == ["f.gz"]
    assert "downloading f.gz" in capfd.readouterr().err  # the progress bar names the file
    _no_pooch(monkeypatch)
    again, got = sources.fetch("toy", "f.gz", _md5(content), ["https://127.0.0.1:9/"])
    assert again == path and got == content


def test_files_in_the_data_folder_need_no_network_and_no_pooch(tmp_path, cache, monkeypatch):
    _no_pooch(monkeypatch)
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "f.gz").write_bytes(gzip.compress(b"local"))
    monkeypatch.setenv("BACKPROP_DATA_DIR", str(tmp_path / "data"))
    path, got = sources.fetch("toy", "f.gz", _md5(b"local"), ["https://127.0.0.1:9/"])
    assert path == tmp_path / "data" / "toy" / "f.gz" and got == b"local" and not cache.exists()
    with pytest.raises(DataError, match=r"^toy/g.gz not found in \$BACKPROP_DATA_DIR or "):
        sources.fetch("toy", "g.gz", _md5(b"local"), ["https://127.0.0.1:9/"], download=False)


def test_a_download_without_pooch_names_the_extra(cache, monkeypatch):
    _no_pooch(monkeypatch)
    with pytest.raises(MissingDependency) as raised:
        sources.fetch("toy", "f.gz", "0" * 32, ["https://127.0.0.1:9/"])
    assert str(raised.value) == (
        'could not download toy/f.gz: downloading needs pooch (pip install "backprop[data]"); '
        "or put the files in a folder and pass data_dir or set BACKPROP_DATA_DIR"
    )
    assert isinstance(raised.value, ImportError) and not cache.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "HTTP://example.org/", "ftp://example.org/", "file:///tmp/",
                                 "//example.org/", "https:///nohost/"])  # fmt: skip
def test_a_mirror_that_is_not_https_is_refused_before_anything_is_fetched(cache, url):
    with pytest.raises(ConfigError, match=f"^refusing to download toy/f.gz from {url}f.gz: mirrors must be https://"):
        sources.fetch("toy", "f.gz", "0" * 32, ["https://127.0.0.1:9/", url])
    assert not cache.exists()


def test_the_shipped_mirrors_are_https():
    for url in MNIST_MIRRORS + FASHION_MIRRORS:
        assert url.startswith("https://") and url.endswith("/"), url


def test_a_wrong_download_leaves_nothing_behind(mirror, cache):
    url, _ = mirror
    with pytest.raises(DataError, match=r"could not download toy/f.gz \(https://.*bad/f.gz: .*checksum mismatch"):
        sources.fetch("toy", "f.gz", _md5(b"some dataset bytes"), [url + "bad/"])
    assert list(cache.iterdir()) == []  # neither the file nor a temporary file


def test_a_cut_download_leaves_nothing_behind(mirror, cache):
    url, content = mirror
    with pytest.raises(DataError, match=r"could not download toy/f.gz \(https://.*/cut/good/f.gz: "):
        sources.fetch("toy", "f.gz", _md5(content), [url + "cut/good/"])
    assert list(cache.iterdir()) == []


def test_mirrors_are_tried_in_order_until_one_gives_the_right_file(mirror, cache):
    url, content = mirror
    mirrors = ["https://127.0.0.1:9/", url + "missing/", url + "to-http/good/", url + "bad/", url + "good/"]
    path, got = sources.fetch("toy", "f.gz", _md5(content), mirrors)
    assert got == content and os.listdir(cache) == ["f.gz"]


def test_when_every_mirror_fails_one_line_names_the_file_and_every_url(mirror, cache):
    url, content = mirror
    mirrors = ["https://127.0.0.1:9/", url + "missing/", url + "to-http/good/", url + "bad/"]
    with pytest.raises(DataError) as raised:
        sources.fetch("toy", "f.gz", _md5(content), mirrors)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("could not download toy/f.gz (https://127.0.0.1:9/f.gz: ")
    assert message.endswith("; put the files in a folder and pass data_dir or set BACKPROP_DATA_DIR")
    for part in [
        f"{url}missing/f.gz: 404 Client Error",
        f"{url}to-http/good/f.gz: redirected to {url.replace('https:', 'http:')}good/f.gz: refusing",
        f"{url}bad/f.gz: {cache}/.f.gz.",  # the temporary file, named by the checksum error
    ]:
        assert part in message, (part, message)
    assert list(cache.iterdir()) == []


def test_a_download_removes_the_temporary_file_a_killed_download_left(mirror, cache):
    url, content = mirror
    cache.mkdir(parents=True)
    (cache / ".f.gz.k1lled_0.part").write_bytes(b"half a file")  # as atomic_write names it
    sources.fetch("toy", "f.gz", _md5(content), [url + "good/"])
    assert os.listdir(cache) == ["f.gz"]


# --- what each extra brings ----------------------------------------------------------------------------------------


def test_the_extras_named_in_messages_exist():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("pooch") for req in extras["data"])
    assert any(req.startswith("threadpoolctl") for req in extras["progress"])  # the quick start's extras
    assert {"pooch", "threadpoolctl"} <= {req.split(">")[0].split("=")[0] for req in extras["dev"]}


def test_backprop_info_without_threadpoolctl_says_what_to_install(monkeypatch, capsys):
    from backprop.cli import main

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with pytest.raises(MissingDependency, match=r'needs threadpoolctl: pip install "backprop\[progress\]"'):
        bp.blas.numpy_blas()
    monkeypatch.delenv("BACKPROP_BACKEND", raising=False)
    monkeypatch.delenv("BACKPROP_DEVICE", raising=False)
    assert main(["info"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("BLAS (NumPy)"))
    assert 'pip install "backprop[progress]"' in line, line
