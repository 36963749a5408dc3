"""Command line of the search app (`python -m apps.search {index,query,serve} --help`)."""
import argparse
import json
import logging
import sys

from modules.checkpoint import CheckpointError
from modules.integrity import IntegrityError

from .vectors import NPROBE

logger = logging.getLogger("apps.search")
# Failures whose message names the file or flag at fault: one line, no traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, ImportError, CheckpointError, IntegrityError)


def shard(value):
    """`I/N` -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {value}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {value}: need 0 <= I < N")
    return index, count


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m apps.search", description="Search your own videos by text "
                                     "or by example with a trained retrieval checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index (or update the index of) a folder or LMDB of videos")
    index.add_argument("--checkpoint", required=True, help="a trained retrieval model, e.g. ckpt.best.pth.tar")
    index.add_argument("--videos", required=True, help="a folder (searched recursively) or a video LMDB")
    index.add_argument("--index", required=True, help="the index folder (created, or updated incrementally)")
    index.add_argument("--window", type=float, default=None, help="window length in seconds (default 10; an "
                       "existing index keeps its own)")
    index.add_argument("--stride", type=float, default=None, help="seconds between window starts (default 5)")
    index.add_argument("--batch_size", type=int, default=8, help="windows per encoded (and committed) batch")
    index.add_argument("--num_workers", type=int, default=2, help="decoding worker processes per process")
    index.add_argument("--shard", type=shard, default=None, help="I/N: encode only shard I of N (no torchrun) "
                       "into a part file; a later run without --shard merges the parts")
    index.add_argument("--no_progress", action="store_true", help="no progress bar")

    query = commands.add_parser("query", help="the best windows for a caption or an example video")
    query.add_argument("--index", required=True, help="the index folder")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a caption, e.g. \"a man is cooking pasta\"")
    what.add_argument("--video", help="a video file: find similar videos")
    query.add_argument("--top_k", type=int, default=10, help="number of results (default 10)")
    query.add_argument("--max_per_video", type=int, default=None, help="at most this many windows of one video")
    query.add_argument("--json", action="store_true", help="print [{path, start, end, score}] (seconds, best first)")
    query.add_argument("--checkpoint", default=None, help="the model, when it moved since indexing")
    query.add_argument("--nprobe", type=int, default=NPROBE, help="IVF lists searched (large indexes; default "
                       "%(default)s): more is slower and closer to exact search")

    serve = commands.add_parser("serve", help="a local web page to search the index")
    serve.add_argument("--index", required=True, help="the index folder")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--checkpoint", default=None, help="the model, when it moved since indexing")
    serve.add_argument("--nprobe", type=int, default=NPROBE, help="IVF lists searched (default %(default)s)")
    return parser


def run(args):
    if args.command == "index":
        from .indexing import index_collection

        if args.batch_size < 1 or args.num_workers < 0:
            raise ValueError("--batch_size must be >= 1 and --num_workers >= 0")
        summary = index_collection(args.checkpoint, args.videos, args.index, args.window, args.stride,
                                   args.batch_size, args.num_workers, args.shard, not args.no_progress)
        if summary is not None:
            print(json.dumps({**summary, "broken": len(summary["broken"])}))
    elif args.command == "query":
        from .query import run_query

        print(run_query(args.index, args.text, args.video, args.top_k, args.max_per_video, args.json,
                        args.checkpoint, args.nprobe))
    else:
        from .serve import serve

        serve(args.index, args.port, args.host, args.checkpoint, args.nprobe)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        run(args)
    except EXPECTED_ERRORS as error:
        logger.error("%s: %s", type(error).__name__, error)
        sys.exit(1)


if __name__ == "__main__":
    main()
