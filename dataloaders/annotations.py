"""Reading annotation files with errors that name the file and the format it should have."""
import csv
import json
import os
import pickle

from .video_reader import lmdb_keys


class AnnotationError(ValueError):
    """An annotation file is missing or not in the expected format."""


def _missing(path, expected):
    return AnnotationError(f"annotation file {path} does not exist; expected {expected}")


def read_json(path, expected):
    """Parsed JSON of ``path``; AnnotationError naming ``expected`` when missing or invalid."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path} is not valid JSON ({error}); expected {expected}") from error


def read_pickle(path, expected):
    """Unpickled content of ``path``; AnnotationError when missing or unreadable."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
        raise AnnotationError(f"{path} is not a readable pickle ({error}); expected {expected}") from error


def read_lines(path, expected):
    """Stripped non-empty lines of a text file (id lists, tab-separated files)."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_csv_columns(path, columns, expected):
    """Rows of a csv with a header, as dicts restricted to ``columns`` (all must be present)."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    with open(path, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise AnnotationError(f"{path} has no column {', '.join(absent)} in its header "
                                  f"{reader.fieldnames}; expected {expected}")
        rows = [{c: row[c] for c in columns} for row in reader]
    if any(value is None for row in rows for value in row.values()):
        raise AnnotationError(f"{path} has rows with fewer fields than its header; expected {expected}")
    return rows


def malformed(path, expected, detail):
    """The error to raise when a parsed file does not have the expected structure."""
    return AnnotationError(f"{path} is malformed ({detail}); expected {expected}")


def walk_files(folder, extensions=None):
    """Files under ``folder`` (sub-folders walked, both sorted); only names ending in one of
    ``extensions`` (lower-case suffixes, compared case-insensitively) when given."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if extensions is None or name.lower().endswith(tuple(extensions)))
    return found


def video_files(features_path, lmdb_path):
    """Paths of all video files: walked under ``features_path``, or in LMDB mode one per key
    (``features_path/<key>``, since readers only use the base name as the key)."""
    if lmdb_path:
        return [os.path.join(features_path, key) for key in lmdb_keys(lmdb_path)]
    return walk_files(features_path)
