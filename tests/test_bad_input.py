"""Bad data on disk (issue 7 item 7): anther's own format (``<split>.jsonl`` + images) refuses
corrupt, truncated and oversized images, missing, null and mistyped fields, paths outside the
data folder, non-UTF-8 lines and reused ids with a DataFormatError naming the file and line;
with ``skip_bad`` each is counted instead and the good records still load. The loaders of the
published formats share the image decoding and the JSON-lines reading checked here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from anther.core.images import decode_bytes
from anther.core.sample import DataFormatError, read_split
from anther.data.formats.hateful_memes import load_hateful_memes


def _png(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _record(**fields) -> dict:
    base = {"id": "a", "image": "img.png", "context": "", "question": "what colour is it?", "answer": "red",
            "options": ["red", "blue"]}
    return {k: v for k, v in (base | fields).items() if v is not _DROP}


_DROP = object()


def _folder(tmp_path: Path, lines: list[object], image: bytes | None = None) -> Path:
    """A data folder with ``train.jsonl`` holding ``lines`` (dicts as JSON, bytes as they are)
    and ``img.png`` (a valid one unless ``image`` says otherwise)."""
    (tmp_path / "img.png").write_bytes(_png() if image is None else image)
    with (tmp_path / "train.jsonl").open("wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")
    return tmp_path


BAD_IMAGES = {
    "truncated PNG": _png()[:60],
    "random bytes": bytes(range(256)) * 4,
    "empty file": b"",
    "PNG header, garbage body": _png()[:16] + b"\x00" * 200,
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_a_corrupt_or_truncated_image_names_file_line_and_image(tmp_path, name):
    folder = _folder(tmp_path, [_record()], image=BAD_IMAGES[name])
    with pytest.raises(DataFormatError, match=rf"{folder / 'train.jsonl'}:1: cannot decode image .*img\.png"):
        read_split(folder, "train")


def test_an_image_past_pillows_pixel_limit_is_refused_not_decoded(tmp_path, monkeypatch):
    """A decompression bomb: Pillow refuses to decode it; the error names the record."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x16 = 256 pixels > 2 * 100
    folder = _folder(tmp_path, [_record()])
    with pytest.raises(DataFormatError, match=r"train\.jsonl:1: cannot decode image .*DecompressionBombError"):
        read_split(folder, "train")
    with pytest.raises(DataFormatError, match="row 3: cannot decode the image bytes: DecompressionBombError"):
        decode_bytes(_png(), "x.parquet: row 3")


BAD_RECORDS = {
    "missing question": (_record(question=_DROP), r"missing field\(s\) \['question'\]"),
    "null answer": (_record(answer=None), r"missing field\(s\) \['answer'\]"),
    "empty question": (_record(question="  "), "'question' must be a non-empty string"),
    "numeric answer": (_record(answer=3, options=["3", "4"]), "'answer' must be a non-empty string"),
    "context not text": (_record(context=["a"]), "'context' must be a string or null"),
    "options not a list": (_record(options="red,blue"), "'options' must be a list of strings"),
    "answer not an option": (_record(answer="green"), "answer 'green' is not among options"),
    "image not a path": (_record(image=5), "'image' must be a relative path or null"),
    "absolute image path": (_record(image="/etc/passwd"), "'image' must be a path inside the data folder"),
    "image path escapes": (_record(image="../outside.png"), "'image' must be a path inside the data folder"),
    "missing image file": (_record(image="nope.png"), "image file not found: .*nope.png"),
    "bool id": (_record(id=True), "'id' must be a non-empty string or an integer"),
    "not an object": ([1, 2], "expected a JSON object, got list"),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_a_malformed_record_names_file_line_and_field(tmp_path, name):
    record, message = BAD_RECORDS[name]
    folder = _folder(tmp_path, [_record(id="ok"), record])
    with pytest.raises(DataFormatError, match=rf"{folder / 'train.jsonl'}:2: {message}"):
        read_split(folder, "train")


def test_non_utf8_lines_invalid_json_and_reused_ids_name_their_line(tmp_path):
    folder = _folder(tmp_path, [_record(id="x"), b'{"id": "\xff\xfe"}'])
    with pytest.raises(DataFormatError, match=r"train\.jsonl:2: not UTF-8 text"):
        read_split(folder, "train")
    folder = _folder(tmp_path, [_record(id="x"), b'{"id": "y", "question": '])
    with pytest.raises(DataFormatError, match=r"train\.jsonl:2: invalid JSON"):
        read_split(folder, "train")
    folder = _folder(tmp_path, [_record(id="x"), _record(id="y"), _record(id="x")])
    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: id 'x' is already used at .*train\.jsonl:1"):
        read_split(folder, "train")


def test_skip_bad_counts_every_bad_record_and_keeps_the_good_ones(tmp_path):
    bad = [record for record, _ in BAD_RECORDS.values()] + [b"\xff\xfe not utf-8", b"{", _record(id="good")]
    folder = _folder(tmp_path, [_record(id="good"), *bad, _record(id="good2", image=None)])
    samples, skipped = read_split(folder, "train", skip_bad=True)
    assert [s.id for s in samples] == ["good", "good2"]
    assert skipped.total() == len(bad)
    assert samples[0].image is not None and samples[0].image.size == (16, 16) and samples[1].image is None


def test_published_jsonl_formats_name_a_non_utf8_line_too(tmp_path):
    """Hateful Memes (and LLaVA JSON-lines) read their lines with the same reader."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.png").write_bytes(_png())
    good = json.dumps({"id": 1, "img": "img/1.png", "label": 0, "text": "hello"}).encode()
    (tmp_path / "train.jsonl").write_bytes(good + b"\n" + b'{"id": 2, "text": "\xc3\x28"}\n')
    with pytest.raises(DataFormatError, match=r"train\.jsonl:2: not UTF-8 text"):
        load_hateful_memes(tmp_path, "train")
    samples, skipped = load_hateful_memes(tmp_path, "train", skip_bad=True)
    assert len(samples) == 1 and skipped.total() == 1
