"""Annotation files that are not what they should be: a Latin-1 csv, a caption beyond the csv
module's field limit, a header-only csv, a raw-captions.pkl that would run code."""
import os
import pickle

import pytest

from dataloaders import lsmdc, msrvtt, msvd
from dataloaders.annotations import AnnotationError, read_csv_columns, read_pickle

HEADER = "key,vid_key,video_id,sentence\n"


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_latin1_csv_names_the_file_line_and_encoding(tmp_path):
    path = write_bytes(tmp_path / "test.csv", (HEADER + "ret0,msr0,video0,a cat\nret1,msr1,video1,un café\n")
                       .encode("latin-1"))
    with pytest.raises(AnnotationError) as err:
        msrvtt.load_test_pairs(path, "videos")
    message = str(err.value)
    offset = (HEADER + "ret0,msr0,video0,a cat\nret1,msr1,video1,un caf").encode().__len__()
    assert path in message and "not UTF-8" in message and "byte 0xe9" in message
    assert f"offset {offset} (line 3)" in message and "iconv -f latin1 -t utf-8" in message


def test_utf8_with_byte_order_mark_loads(tmp_path):
    path = write_bytes(tmp_path / "train.csv", "\ufeffvideo_id,caption\nvideo0,un café\n".encode())
    assert read_csv_columns(path, ["video_id", "caption"], "csv") == [{"video_id": "video0", "caption": "un café"}]


def test_caption_longer_than_the_csv_field_limit_loads(tmp_path):
    caption = "a man talks about " + "many things " * 20_000  # 240k characters > 131,072
    path = write_bytes(tmp_path / "test.csv", (HEADER + f'ret0,msr0,video0,"{caption}"\n').encode())
    (pair,) = msrvtt.load_test_pairs(path, "videos")
    assert pair.captions == (caption,)


def test_header_only_csv_is_an_empty_split_naming_the_file(tmp_path):
    path = write_bytes(tmp_path / "test.csv", HEADER.encode())
    with pytest.raises(AnnotationError, match=f"the test split is empty: {path}"):
        msrvtt.load_test_pairs(path, "videos")


def test_empty_lsmdc_annotations_are_an_empty_split(tmp_path):
    write_bytes(tmp_path / "LSMDC16_annos_val.csv", b"")
    write_bytes(tmp_path / "video_path.json", b'{"c1": "m/c1.avi"}')
    with pytest.raises(AnnotationError, match="the val split is empty: .*LSMDC16_annos_val.csv"):
        lsmdc.load_pairs(str(tmp_path), "videos", "val")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_raw_captions_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = write_bytes(tmp_path / "raw-captions.pkl", pickle.dumps({"vid1": [["a", "cat"]], "x": Payload(marker)}))
    (tmp_path / "test_list.txt").write_text("vid1\n")
    with pytest.raises(AnnotationError) as err:
        msvd.load_pairs(str(tmp_path), str(tmp_path / "videos"), "test")
    assert not marker.exists()
    assert path in str(err.value) and "posix.system" in str(err.value) and "refused" in str(err.value)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_raw_captions_in_every_pickle_protocol_load(tmp_path, protocol):
    captions = {"vid1": [["a", "cat", "sits"], ["a", "kitten"]], "vid2": [["un", "café"]]}
    path = write_bytes(tmp_path / "raw-captions.pkl", pickle.dumps(captions, protocol=protocol))
    assert read_pickle(path, "captions") == captions


def test_truncated_pickle_names_the_file(tmp_path):
    path = write_bytes(tmp_path / "raw-captions.pkl", pickle.dumps({"vid1": [["a", "cat"]]})[:-5])
    with pytest.raises(AnnotationError, match=f"{path} is not a readable pickle"):
        read_pickle(path, "captions")
