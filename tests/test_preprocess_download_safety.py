"""preprocess/download_lsmdc.py keeps the credentials and the disk safe, against loopback HTTP
servers (two ports are two origins): no Authorization header after a redirect to another
origin, none over plain http unless allowed, no file outside --output_dir, no password shown."""
import base64
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from preprocess.download_lsmdc import (DownloadError, SameOriginRedirects, download_all, local_paths, main,
                                       redact)

USER, PASSWORD = "mpii-user", "s3cret-pass"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CLIP = b"\x00\x01 not a real clip, only bytes " * 50


class Server(ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) to anyone, answers ``redirects`` (path -> URL) with a 302,
    and records (path, Authorization header) of every request."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.redirects, self.requests = {}, {}, []

    @property
    def root(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Authorization")))
        if self.path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[self.path])
            self.end_headers()
        elif self.path in self.server.files:
            data = self.server.files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    """Two servers on two loopback ports."""
    running = []
    for _ in range(2):
        server = Server()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
    yield running
    for server in running:
        server.shutdown()
        server.server_close()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("LSMDC_USER", USER)
    monkeypatch.setenv("LSMDC_PASSWORD", PASSWORD)


def fetch_all(urls, out, **kwargs):
    return download_all(urls, str(out), None, workers=1, retries=1, progress=False, **kwargs)


def test_redirect_to_another_host_loses_the_credentials(servers, credentials, tmp_path):
    first, second = servers
    first.redirects["/lsmdc/m1/c1.avi"] = second.root + "/mirror/m1/c1.avi"
    second.files["/mirror/m1/c1.avi"] = CLIP
    result = fetch_all([first.root + "/lsmdc/m1/c1.avi"], tmp_path / "out", allow_http_credentials=True)
    assert (result["done"], result["failed"]) == (1, [])
    assert (tmp_path / "out" / "m1" / "c1.avi").read_bytes() == CLIP
    assert first.requests == [("/lsmdc/m1/c1.avi", AUTHORIZATION)]
    assert second.requests == [("/mirror/m1/c1.avi", None)]


def test_redirect_on_the_same_origin_keeps_the_credentials(servers, credentials, tmp_path):
    server = servers[0]
    server.redirects["/old/m1/c1.avi"] = server.root + "/new/m1/c1.avi"
    server.files["/new/m1/c1.avi"] = CLIP
    result = fetch_all([server.root + "/old/m1/c1.avi"], tmp_path / "out", allow_http_credentials=True)
    assert result["done"] == 1
    assert server.requests == [("/old/m1/c1.avi", AUTHORIZATION), ("/new/m1/c1.avi", AUTHORIZATION)]


def test_redirect_from_https_to_http_on_the_same_host_loses_the_credentials():
    request = urllib.request.Request("https://lsmdc.example/m1/c1.avi", headers={"Authorization": AUTHORIZATION})
    handler = SameOriginRedirects()
    to_http = handler.redirect_request(request, None, 302, "Found", {}, "http://lsmdc.example/m1/c1.avi")
    assert not to_http.has_header("Authorization")
    same = handler.redirect_request(request, None, 302, "Found", {}, "https://LSMDC.example:443/x/m1/c1.avi")
    assert same.get_header("Authorization") == AUTHORIZATION


def test_plain_http_gets_no_credentials_unless_allowed(servers, credentials, tmp_path, capsys):
    server = servers[0]
    server.files["/lsmdc/m1/c1.avi"] = CLIP
    url = server.root + "/lsmdc/m1/c1.avi"
    result = fetch_all([url], tmp_path / "out")
    (failed_url, reason), = result["failed"]
    assert failed_url == url and "plain http" in reason and "--allow_http_credentials" in reason
    assert server.requests == []
    links = tmp_path / "links.txt"
    links.write_text(url + "\n")
    with pytest.raises(SystemExit, match="1 URLs are plain http.*--allow_http_credentials"):
        main(["--lists", str(links), "--output_dir", str(tmp_path / "out"), "--only_download"])
    assert server.requests == []


@pytest.mark.parametrize("path", ["/lsmdc/../c1.avi", "/lsmdc/%2e%2e/c1.avi", "/lsmdc/m1/..%2f..%2fc1.avi",
                                  "/lsmdc/m1/..", "/lsmdc/m1/%2e"])
def test_url_cannot_write_outside_the_output_folder(servers, tmp_path, path):
    server = servers[0]
    server.files[path] = CLIP
    out = tmp_path / "a" / "out"
    with pytest.raises(DownloadError, match="inside --output_dir"):
        local_paths(server.root + path, str(out), compress=False)
    result = fetch_all([server.root + path], out)
    assert len(result["failed"]) == 1 and server.requests == []
    assert [name for _, _, names in os.walk(tmp_path) for name in names] == []


def test_symlink_cannot_lead_outside_the_output_folder(servers, tmp_path):
    server = servers[0]
    server.files["/lsmdc/m1/c1.avi"] = CLIP
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "m1")
    result = fetch_all([server.root + "/lsmdc/m1/c1.avi"], tmp_path / "out")
    (_, reason), = result["failed"]
    assert "outside --output_dir" in reason and "symlink" in reason
    assert os.listdir(tmp_path / "elsewhere") == [] and server.requests == []


def test_credentials_in_a_url_are_refused_and_never_shown(servers, tmp_path, capsys):
    server = servers[0]
    server.files["/lsmdc/m1/c1.avi"] = CLIP
    url = server.root.replace("http://", "http://someone:hunter2@") + "/lsmdc/m1/c1.avi"
    assert redact(url) == server.root.replace("http://", "http://***@") + "/lsmdc/m1/c1.avi"
    links = tmp_path / "links.txt"
    links.write_text(url + "\n")
    failures = tmp_path / "failed.txt"
    result = main(["--lists", str(links), "--output_dir", str(tmp_path / "out"), "--only_download",
                   "--failures", str(failures)])
    (shown, reason), = result["failed"]
    assert shown == redact(url) and "carries credentials" in reason
    printed = capsys.readouterr()
    for text in (shown, reason, failures.read_text(), printed.out, printed.err):
        assert "hunter2" not in text and "someone" not in text
    assert redact(url) in failures.read_text() and server.requests == []
