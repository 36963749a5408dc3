"""preprocess/download_lsmdc.py against an HTTP server on loopback: basic authentication from
the environment, Range resumption, compression of the downloads, 404s and bad credentials."""
import base64
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import pytest

from preprocess import download_lsmdc
from preprocess.download_lsmdc import download_all, local_paths, main, read_url_lists
from tests.video_factory import write_video

USER, PASSWORD = "mpii-user", "s3cret:pass"


class ClipServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) behind basic authentication, honouring Range."""

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), ClipHandler)
        self.files = files
        self.cut_once = set()  # paths whose next answer stops half way
        self.requests = []  # (path, Range header or None, Authorization header or None)

    @property
    def root(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class ClipHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="lsmdc"')
            self.end_headers()
            return
        if self.path not in server.files:
            self.send_error(404)
            return
        data = server.files[self.path]
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        if start >= len(data) and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in server.cut_once:  # announce everything, send half, drop the connection
            server.cut_once.discard(self.path)
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def clips(tmp_path):
    """Two real videos of two movies served on loopback; yields (server, {url: bytes})."""
    files = {}
    for movie, clip, frames in (("1004_Juno", "1004_Juno_00.00.51.926-00.00.54.129.avi", 12),
                                ("3001_21_JUMP_STREET", "3001_21_JUMP_STREET_00.01.05.000-00.01.07.500.avi", 9)):
        path = write_video(str(tmp_path / clip), num_frames=frames, width=160, height=120, fps=6,
                           container_format="avi")
        with open(path, "rb") as f:
            files[f"/lsmdc/videos/{movie}/{clip}"] = f.read()
    server = ClipServer(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, {server.root + path: data for path, data in files.items()}
    server.shutdown()
    server.server_close()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("LSMDC_USER", USER)
    monkeypatch.setenv("LSMDC_PASSWORD", PASSWORD)


def write_list(path, urls):
    """MPII's link-list layout: a header line, the URLs (one repeated), a blank line."""
    path.write_text("LSMDC download links\n" + "\n".join(urls + urls[:1]) + "\n\n")
    return str(path)


def test_url_lists_and_paths(tmp_path):
    first = write_list(tmp_path / "a.txt", ["http://h/x/m1/c2.avi", "http://h/x/m1/c1.avi"])
    second = write_list(tmp_path / "b.txt", ["https://h/x/m2/c3.avi"])
    assert read_url_lists([first, second]) == ["http://h/x/m1/c1.avi", "http://h/x/m1/c2.avi",
                                               "https://h/x/m2/c3.avi"]
    assert local_paths("http://h/x/m1/c1.avi", "out", True) == ("out/m1/c1.mp4", "out/m1/c1.avi.download")
    assert local_paths("http://h/x/m1/c1.avi", "out", False) == ("out/m1/c1.avi", "out/m1/c1.avi.download")


def test_download_resume_and_failures(clips, credentials, tmp_path):
    server, files = clips
    urls = sorted(files)
    missing = server.root + "/lsmdc/videos/1004_Juno/not_there.avi"
    out = tmp_path / "video"
    # A partial download from an interrupted run: the first 1,000 bytes of the first clip.
    _, partial = local_paths(urls[0], str(out), compress=False)
    os.makedirs(os.path.dirname(partial))
    with open(partial, "wb") as f:
        f.write(files[urls[0]][:1000])

    result = download_all(urls + [missing], str(out), None, workers=2, retries=1,
                          failures_path=str(tmp_path / "failed.txt"), progress=False, allow_http_credentials=True)

    assert (result["done"], result["skipped"]) == (2, 0)
    assert [url for url, _ in result["failed"]] == [missing]
    assert "HTTP 404" in result["failed"][0][1]
    assert (tmp_path / "failed.txt").read_text().startswith(missing + "\t")
    for url in urls:
        target, download = local_paths(url, str(out), compress=False)
        assert open(target, "rb").read() == files[url]
        assert not os.path.exists(download)
    ranges = {path: rng for path, rng, _ in server.requests}
    assert ranges[urls[0][len(server.root):]] == "bytes=1000-"  # resumed, not restarted
    assert ranges[urls[1][len(server.root):]] is None
    # A rerun downloads nothing again.
    count = len(server.requests)
    again = download_all(urls, str(out), None, workers=1, retries=1, progress=False, allow_http_credentials=True)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 2, [])
    assert len(server.requests) == count


def test_dropped_connection_is_resumed_by_the_next_attempt(clips, credentials, tmp_path, monkeypatch):
    server, files = clips
    url = sorted(files)[0]
    path = url[len(server.root):]
    server.cut_once.add(path)
    monkeypatch.setattr(download_lsmdc, "RETRY_DELAY", 0.0)  # the forked workers inherit it
    result = download_all([url], str(tmp_path / "video"), None, workers=1, retries=2, progress=False,
                          allow_http_credentials=True)
    assert (result["done"], result["failed"]) == (1, [])
    target, _ = local_paths(url, str(tmp_path / "video"), compress=False)
    assert open(target, "rb").read() == files[url]
    half = len(files[url]) // 2
    assert [rng for p, rng, _ in server.requests if p == path] == [None, f"bytes={half}-"]


def test_download_and_compress_cli(clips, credentials, tmp_path, capsys):
    server, files = clips
    urls = sorted(files)
    out = tmp_path / "video"
    # A complete download whose compression did not happen yet: the server answers 416.
    _, partial = local_paths(urls[1], str(out), compress=True)
    os.makedirs(os.path.dirname(partial))
    with open(partial, "wb") as f:
        f.write(files[urls[1]])
    links = write_list(tmp_path / "MPIIMD_downloadLinks.txt", urls)

    result = main(["--lists", links, "--output_dir", str(out), "--workers", "2", "--size", "64",
                   "--allow_http_credentials"])  # the loopback server speaks plain http

    assert (result["done"], result["failed"]) == (2, [])
    for url, frames in zip(urls, (6, 5)):  # 2 s and 1.5 s of video at 3 fps (1.5 * 3 rounds to 5)
        target, download = local_paths(url, str(out), compress=True)
        assert target.endswith(".mp4") and not os.path.exists(download)
        with av.open(target) as container:
            stream = container.streams.video[0]
            assert (stream.frames, stream.average_rate) == (frames, 3)
            assert (stream.codec_context.width, stream.codec_context.height) == (84, 64)
    assert (out / "download_failures.txt").read_text() == ""
    assert "downloaded 2" in capsys.readouterr().out


def test_wrong_credentials_are_reported_not_leaked(clips, monkeypatch, tmp_path):
    server, files = clips
    monkeypatch.setenv("LSMDC_USER", USER)
    monkeypatch.setenv("LSMDC_PASSWORD", "wrong-password")
    result = download_all(sorted(files)[:1], str(tmp_path / "video"), None, workers=1, retries=1, progress=False,
                          allow_http_credentials=True)
    (url, reason), = result["failed"]
    assert "HTTP 401" in reason and "LSMDC_USER" in reason
    assert "wrong-password" not in reason
    assert not any(name for _, _, names in os.walk(tmp_path / "video") for name in names)


def test_credentials_never_on_the_command_line(tmp_path):
    with pytest.raises(SystemExit):
        main(["--lists", "x.txt", "--output_dir", str(tmp_path), "--password", "p"])
    with pytest.raises(SystemExit, match="--lists"):
        main(["--lists", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path)])
