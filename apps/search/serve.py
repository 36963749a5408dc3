"""`serve`: a local web page to search an index (FastAPI + one static HTML page, no build step).

Routes:
  GET /                      the page (static/index.html)
  GET /api/search?q=TEXT&top_k=K&max_per_video=M   {"results": [{path, name, start, end, score,
                             thumb, video}]}, best first
  GET /thumb/{window_id}.jpg the middle frame of a window, 320 pixels wide (cached)
  GET /video/{video_id}      the video file (HTTP range requests, so the browser can seek)
"""
import io
import os
import threading
from functools import lru_cache

from .collection import open_videos
from .query import Searcher
from .vectors import NPROBE

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
THUMB_WIDTH = 320
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".mov": "video/quicktime", ".ogv": "video/ogg"}


def import_web():
    try:
        import fastapi
        import uvicorn
    except ImportError:
        raise ImportError("`serve` needs FastAPI and uvicorn: pip install -r requirements-apps.txt") from None
    return fastapi, uvicorn


def middle_frame_jpeg(source, start, end):
    """JPEG bytes of the middle frame of the window [start, end] of a video (path or file object)."""
    from PIL import Image

    from dataloaders.decode import decode_clip

    frames, _ = decode_clip(source, lambda n: [n // 2], window=(start, end))
    image = Image.fromarray(frames[0])
    height = max(1, round(image.height * THUMB_WIDTH / image.width))
    buffer = io.BytesIO()
    image.resize((THUMB_WIDTH, height), Image.BICUBIC).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def create_app(index_dir, checkpoint=None, nprobe=NPROBE):
    """The FastAPI application over one index folder."""
    fastapi, _ = import_web()
    from fastapi.responses import FileResponse, HTMLResponse, Response

    searcher = Searcher(index_dir, checkpoint, nprobe)
    videos = open_videos(searcher.settings["videos"])
    lock = threading.Lock()  # one search at a time: the model and faiss run on all cores anyway
    app = fastapi.FastAPI(title="Video search", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page():
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
            return f.read()

    @app.get("/api/search")
    def search(q: str, top_k: int = 12, max_per_video: int = 1):
        if not q.strip() or top_k < 1 or max_per_video < 0:
            raise fastapi.HTTPException(400, "q must not be empty, top_k >= 1, max_per_video >= 0 (0: no limit)")
        with lock:
            results = searcher.search(searcher.text_vector(q), min(top_k, 100), max_per_video or None)
        return {"query": q, "results": [
            {"path": r["path"], "name": os.path.basename(r["path"]), "start": r["start"], "end": r["end"],
             "score": r["score"], "thumb": f"/thumb/{r['window_id']}.jpg", "video": f"/video/{r['video_id']}"}
            for r in results]}

    @lru_cache(maxsize=1024)
    def thumbnail(window_id):
        with lock:
            found = searcher.store.lookup([window_id]).get(window_id)
        if found is None:
            return None
        _, name, start, end = found
        return middle_frame_jpeg(videos.source(name), start, end)

    @app.get("/thumb/{window_id}.jpg")
    def thumb(window_id: int):
        try:
            data = thumbnail(window_id)
        except Exception as error:  # a video changed or broken since indexing
            raise fastapi.HTTPException(404, f"no thumbnail: {type(error).__name__}: {error}")
        if data is None:
            raise fastapi.HTTPException(404, f"no window {window_id}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/video/{video_id}")
    def video(video_id: int):
        with lock:
            name = searcher.store.video_path(video_id)
        if name is None:
            raise fastapi.HTTPException(404, f"no video {video_id}")
        media_type = MEDIA_TYPES.get(os.path.splitext(name)[1].lower(), "video/mp4")
        if videos.lmdb_path is None:
            return FileResponse(videos.path(name), media_type=media_type)
        return Response(videos.source(name).getvalue(), media_type=media_type)

    return app


def serve(index_dir, port, host="127.0.0.1", checkpoint=None, nprobe=NPROBE):
    """Run the page until interrupted (uvicorn, one process)."""
    _, uvicorn = import_web()
    app = create_app(index_dir, checkpoint, nprobe)
    print(f"searching {index_dir} on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
