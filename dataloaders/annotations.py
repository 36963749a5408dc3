"""Reading annotation files with errors that name the file and the format it should have."""
import collections
import csv
import io
import json
import os
import pickle

from .video_reader import lmdb_keys

# Captions longer than the csv module's default field limit (131,072 characters) must load;
# 2**31 - 1 is the largest limit a C long takes on every platform.
CSV_FIELD_LIMIT = 2 ** 31 - 1


class AnnotationError(ValueError):
    """An annotation file is missing or not in the expected format."""


def _missing(path, expected):
    return AnnotationError(f"annotation file {path} does not exist; expected {expected}")


def read_text(path, expected):
    """The text of a UTF-8 file (a leading byte-order mark dropped); AnnotationError naming the
    file, and the line and offset of the first byte that is not UTF-8."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise AnnotationError(
            f"{path} is not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} (line {line}) "
            f"cannot be decoded. Annotation files must be UTF-8; convert it, e.g. for a Latin-1 file "
            f"`iconv -f latin1 -t utf-8 {path} > converted` (expected {expected})") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_json(path, expected):
    """Parsed JSON of ``path``; AnnotationError naming ``expected`` when missing or invalid."""
    text = read_text(path, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON ({error}); expected {expected}") from error


class _NotPlainData(pickle.UnpicklingError):
    """A pickle names a global that ``_PlainUnpickler`` refuses."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickles without naming a global (dicts, lists, tuples, strings, numbers,
    None, booleans) and OrderedDicts. Any other global, a class or function whose call could run
    code, is refused before anything is called."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise _NotPlainData(f"it refers to {module}.{name}, which is not plain data")


def read_pickle(path, expected):
    """Unpickled plain data of ``path`` (see ``_PlainUnpickler``); AnnotationError naming the file
    when it is missing, unreadable or refers to anything else."""
    if not os.path.isfile(path):
        raise _missing(path, expected)
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(f).load()
    except _NotPlainData as error:
        raise AnnotationError(f"{path} is refused ({error}): only plain data is unpickled, so a file "
                              f"that could run code is never loaded; expected {expected}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as error:
        raise AnnotationError(f"{path} is not a readable pickle ({type(error).__name__}: {error}); "
                              f"expected {expected}") from None


def read_lines(path, expected):
    """Stripped non-empty lines of a UTF-8 text file (id lists, tab-separated files)."""
    lines = io.StringIO(read_text(path, expected), newline=None)
    return [line.strip() for line in lines if line.strip()]


def read_csv_columns(path, columns, expected):
    """Rows of a UTF-8 csv with a header, as dicts restricted to ``columns`` (all must be present)."""
    text = read_text(path, expected)
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise AnnotationError(f"{path} has no column {', '.join(absent)} in its header "
                                  f"{reader.fieldnames}; expected {expected}")
        rows = [{c: row[c] for c in columns} for row in reader]
    except csv.Error as error:
        raise AnnotationError(f"{path} line {reader.line_num} is not valid csv ({error}); "
                              f"expected {expected}") from None
    if any(value is None for row in rows for value in row.values()):
        raise AnnotationError(f"{path} has rows with fewer fields than its header; expected {expected}")
    return rows


def require_pairs(pairs, split, source):
    """``pairs`` when there is at least one; else AnnotationError saying that the split is empty
    and which file(s) (``source``) it comes from."""
    if not pairs:
        raise AnnotationError(f"the {split} split is empty: {source} gives no (video, caption) pair")
    return pairs


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
