"""Download the LSMDC clips in parallel, resumably, and compress them on the fly.

    export LSMDC_USER=... LSMDC_PASSWORD=...   # the account MPII grants; never on the command line
    python preprocess/download_lsmdc.py --lists MPIIMD_downloadLinks.txt BlindTest_downloadLinks.txt \\
        MVADaligned_downloadLinks.txt --output_dir lsmdc/video

The link lists are MPII's files (or any text file): every line containing "http" is a URL;
duplicates are dropped. A clip ``.../<movie>/<clip>.avi`` is saved as
``<output_dir>/<movie>/<clip>.mp4``, re-encoded by ``compress_video`` (3 fps, 224-pixel shorter
side) unless ``--only_download`` keeps the original file as ``<output_dir>/<movie>/<clip>.avi``.
Compressing while downloading keeps the disk use far below the 2 TB of the raw clips.

Downloads go to ``<final name>.download`` and resume from its size with an HTTP Range
request; a file is complete when its size equals the size the server announced, and only
then is it compressed (or renamed) to its final name. Finished clips are skipped on a rerun.
Credentials come from the environment variables ``LSMDC_USER`` and ``LSMDC_PASSWORD`` (HTTP
basic authentication); they are never read from the command line, where other users of the
machine could see them. They are sent only over https (unless ``--allow_http_credentials``),
and never to another host, scheme or port after a redirect. URLs carrying ``user:password@``
are refused and shown with it redacted. Every file stays inside ``--output_dir``: a URL whose
folder or file name is ``..`` (or reaches outside through a symlink) is refused. Failed URLs
are listed at the end and written to a file.
"""
import argparse
import base64
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from multiprocessing import Pool

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from preprocess.compress_video import (EncodeOptions, check_options, compress_file,  # noqa: E402
                                      positive_fraction, write_failures)

USER_VARIABLE, PASSWORD_VARIABLE = "LSMDC_USER", "LSMDC_PASSWORD"
DOWNLOAD_SUFFIX = ".download"
CHUNK = 1 << 20
RETRY_DELAY = 2.0  # seconds before the second attempt, doubled for each later one (at most 30)


class DownloadError(RuntimeError):
    pass


def redact(url):
    """``url`` with a ``user:password@`` part shown as ``***@``."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def redact_in(text, url):
    """``text`` with ``url`` and its ``user:password`` part redacted wherever they occur."""
    userinfo = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
    text = text.replace(url, redact(url))
    return text.replace(userinfo, "***") if userinfo else text


def origin(url):
    """(scheme, host, port) of a URL, the port defaulted from the scheme."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(
        parts.scheme.lower())


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the Authorization header only to the origin it was meant for:
    a redirect to another scheme, host or port loses it (urllib would forward it)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(new.full_url) != origin(req.full_url):
            new.remove_header("Authorization")
        return new


OPENER = urllib.request.build_opener(SameOriginRedirects)


def read_url_lists(paths):
    """Every distinct URL of the link lists (lines containing "http", stripped), sorted."""
    urls = set()
    for path in paths:
        with open(path) as f:
            urls.update(line.strip() for line in f if "http" in line)
    return sorted(urls)


def local_paths(url, output_dir, compress):
    """(final file, download file) of a URL ``.../<movie>/<clip>``.

    The final file is ``<output_dir>/<movie>/<clip>`` (with the extension .mp4 when
    compressing); the download file is ``<output_dir>/<movie>/<clip>.download``.
    """
    parts = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/").split("/")
    if len(parts) < 2 or not parts[-1]:
        raise DownloadError(f"cannot take a file name from the URL {redact(url)}")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts[-2:]):
        raise DownloadError(f"{redact(url)}: refusing the folder and file name {parts[-2]!r}/{parts[-1]!r}, "
                            f"which would not stay inside --output_dir")
    folder, name = os.path.join(output_dir, parts[-2]), parts[-1]
    final = os.path.splitext(name)[0] + ".mp4" if compress else name
    paths = os.path.join(folder, final), os.path.join(folder, name + DOWNLOAD_SUFFIX)
    root = os.path.realpath(output_dir)
    for path in paths:
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise DownloadError(f"{redact(url)}: {path} leads outside --output_dir {output_dir} "
                                f"(through a symlink); refusing to write it")
    return paths


def credentials_header():
    """The basic-authentication header from the environment, or {} when the variables are unset."""
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not user or password is None:
        return {}
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _announced_total(response, start):
    """Full size of the resource from a 200 or 206 response, or None when not announced."""
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def fetch(url, partial, headers, timeout):
    """Download ``url`` into ``partial``, resuming from its current size.

    Returns:
        True when ``partial`` now holds the whole resource (its size is the announced one,
        or the server announced none and the transfer ended normally).
    Raises:
        urllib.error.HTTPError, URLError, http.client.HTTPException, OSError on transfer errors
        (the bytes received so far stay in ``partial``).
    """
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={start}-"} if start else {})})
    try:
        response = OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        # 416: the range starts at or past the end; the partial file may already be complete.
        if error.code == 416 and start:
            match = re.match(r"bytes \*/(\d+)", error.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == start:
                return True
            os.remove(partial)  # longer than the resource: start again
        raise
    with response:
        resumed = response.status == 206
        total = _announced_total(response, start if resumed else 0)
        # A 200 answer to a Range request is the whole file: start the partial file again.
        with open(partial, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
    return total is None or os.path.getsize(partial) == total


def request_headers(url, allow_http_credentials=False):
    """The headers for ``url``: the credentials, refused over plain http unless allowed.

    Raises:
        DownloadError when the URL itself carries credentials, or is http with credentials set.
    """
    shown = redact(url)
    if shown != url:
        raise DownloadError(f"{shown}: the URL carries credentials; remove them from the link list and set "
                            f"{USER_VARIABLE} and {PASSWORD_VARIABLE} instead")
    headers = credentials_header()
    if headers and urllib.parse.urlsplit(url).scheme.lower() != "https" and not allow_http_credentials:
        raise DownloadError(f"{url}: refusing to send {USER_VARIABLE}'s password over plain http, where anyone "
                            f"on the way can read it; use https, or pass --allow_http_credentials")
    return headers


def download_one(url, output_dir, compress_options=None, retries=3, timeout=60.0, *, allow_http_credentials=False):
    """Download one clip (and compress it when ``compress_options`` is given).

    Returns:
        "skipped" when the final file exists, else "done".
    Raises:
        DownloadError with the URL (credentials redacted) and the reason.
    """
    headers = request_headers(url, allow_http_credentials)
    target, partial = local_paths(url, output_dir, compress_options is not None)
    if os.path.exists(target):
        return "skipped"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    for attempt in range(1, retries + 1):
        try:
            if fetch(url, partial, headers, timeout):
                break
            reason = "the connection ended before the announced size"
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}; check {USER_VARIABLE} and "
                                    f"{PASSWORD_VARIABLE}") from None
            if error.code < 500 and error.code != 416:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
            reason = f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = f"{type(error).__name__}: {error}"  # what arrived stays in the download file
        if attempt == retries:
            raise DownloadError(f"{url}: {reason} (after {retries} attempts; rerun to resume)")
        time.sleep(min(RETRY_DELAY * 2 ** (attempt - 1), 30))
    if compress_options is None:
        os.replace(partial, target)
        return "done"
    try:
        compress_file(partial, target, compress_options)
    except Exception as error:  # the download is complete but not a usable video: keep it for a look
        raise DownloadError(f"{url}: downloaded to {partial} but cannot compress it: "
                            f"{type(error).__name__}: {error}") from None
    os.remove(partial)
    return "done"


def _run(job):
    url, output_dir, options, retries, timeout, allow_http_credentials = job
    try:
        status = download_one(url, output_dir, options, retries, timeout,
                              allow_http_credentials=allow_http_credentials)
        return redact(url), status, None
    except DownloadError as error:
        return redact(url), "failed", redact_in(str(error), url)
    except Exception as error:  # anything else about one URL must not stop the others
        return redact(url), "failed", redact_in(f"{url}: {type(error).__name__}: {error}", url)


def download_all(urls, output_dir, compress_options=None, workers=8, retries=3, timeout=60.0,
                 failures_path=None, progress=True, *, allow_http_credentials=False):
    """Download every URL with a pool of processes (they also compress).

    Returns:
        dict ``done``, ``skipped`` (counts) and ``failed`` (list of (url, reason), credentials
        redacted, also written to ``failures_path``, one ``url<TAB>reason`` per line).
    """
    jobs = [(url, output_dir, compress_options, retries, timeout, allow_http_credentials) for url in urls]
    counts, failed = {"done": 0, "skipped": 0}, []
    with Pool(max(1, workers)) as pool:
        for url, status, error in tqdm(pool.imap_unordered(_run, jobs), total=len(jobs), desc="download",
                                       unit="clip", disable=not progress):
            if error:
                failed.append((url, error))
            else:
                counts[status] += 1
    failed.sort()
    if failures_path:
        write_failures(failed, failures_path)
    return {**counts, "failed": failed}


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=f"Credentials: set {USER_VARIABLE} and {PASSWORD_VARIABLE} in the environment.")
    parser.add_argument("--lists", nargs="+", required=True,
                        help="link lists (MPIIMD_downloadLinks.txt, BlindTest_downloadLinks.txt, "
                             "MVADaligned_downloadLinks.txt) or plain URL lists")
    parser.add_argument("--output_dir", required=True, help="clips go to <output_dir>/<movie>/<clip>")
    parser.add_argument("--only_download", action="store_true",
                        help="keep the original files, no compression")
    parser.add_argument("--workers", type=int, default=8,
                        help="parallel downloads, in processes that also compress (default %(default)s)")
    parser.add_argument("--retries", type=int, default=3,
                        help="attempts per clip, each resuming the last (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds without data before an attempt fails (default %(default)s)")
    parser.add_argument("--fps", type=positive_fraction, default=EncodeOptions.fps,
                        help="compression frame rate (default %(default)s)")
    parser.add_argument("--size", type=int, default=EncodeOptions.size,
                        help="compression shorter side in pixels (default %(default)s)")
    parser.add_argument("--keyint", type=int, default=EncodeOptions.keyint,
                        help="frames between keyframes (default %(default)s; see compress_video.py --help)")
    parser.add_argument("--allow_http_credentials", action="store_true",
                        help=f"send {USER_VARIABLE}/{PASSWORD_VARIABLE} to plain-http URLs too (readable by "
                             f"anyone on the way; by default only https gets them)")
    parser.add_argument("--failures", default=None,
                        help="file listing failed URLs (default: <output_dir>/download_failures.txt)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if USER_VARIABLE not in os.environ:
        print(f"download_lsmdc: {USER_VARIABLE} is not set; downloading without credentials", file=sys.stderr)
    try:
        urls = read_url_lists(args.lists)
    except OSError as error:
        sys.exit(f"download_lsmdc: cannot read a link list (--lists): {error}")
    options = None if args.only_download else EncodeOptions(fps=args.fps, size=args.size, keyint=args.keyint)
    if options is not None:
        try:
            check_options(options)
        except ValueError as error:
            sys.exit(f"download_lsmdc: {error}")
    plain = [url for url in urls if urllib.parse.urlsplit(url).scheme.lower() != "https"]
    if credentials_header() and plain and not args.allow_http_credentials:
        sys.exit(f"download_lsmdc: {len(plain)} URLs are plain http (e.g. {redact(plain[0])}); refusing to send "
                 f"{USER_VARIABLE}'s password over http: use https URLs, or pass --allow_http_credentials")
    failures = args.failures or os.path.join(args.output_dir, "download_failures.txt")
    print(f"{len(urls)} URLs")
    result = download_all(urls, args.output_dir, options, args.workers, args.retries, args.timeout, failures,
                          allow_http_credentials=args.allow_http_credentials)
    print(f"downloaded {result['done']}, skipped {result['skipped']} finished, failed {len(result['failed'])} "
          f"(listed in {failures})")
    for url, error in result["failed"]:
        print(f"  FAILED {error}")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
