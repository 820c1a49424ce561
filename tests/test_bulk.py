"""siglip-embed on a real Ray cluster of its own (Ray Data, 2 CPUs, the smallest object store
Ray allows), with the random-weight `tiny` checkpoint: vectors equal the transformers
reference, every input gets exactly one row, bad items get their error, reruns resume, memory
stays bounded. Placement on GPU nodes is in tests/test_placement.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from deployments.bulk import BulkArgs, BulkError, run
from deployments.core.checkpoint import LogitParams, weights_fingerprint
from deployments.core.collection_rules import Model
from deployments.core.collections import CollectionStore
from deployments.testing.random_checkpoint import make_checkpoint
from tests.support.image_server import image_server
from tests.support.photos import data_uri, encode, photos

pytestmark = pytest.mark.own_cluster

OBJECT_STORE_BYTES = 80 * 2**20  # just over Ray's minimum (75 MiB)
BROKEN = b"\xff\xd8\xff\xe0 not really a JPEG"


@pytest.fixture(scope="module")
def ray_address():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster on loopback
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Every test photograph (each format and mode the preprocessor promises), half of them in
    a subfolder, a broken JPEG, and a file that is not an image and must be left out."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for index, (name, raw) in enumerate(photos()):
        (folder / ("sub" if index % 2 else "") / name).write_bytes(raw)
    (folder / "broken.jpg").write_bytes(BROKEN)
    (folder / "notes.txt").write_text("not an image")
    return folder


def photo_raws() -> dict[str, bytes]:
    """photo_folder's photographs by id: the path below the folder."""
    return {("sub/" if index % 2 else "") + name: raw for index, (name, raw) in enumerate(photos())}


def photo_ids() -> list[str]:
    return sorted(photo_raws())


def by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    assert len({row["id"] for row in rows}) == len(rows), "an id has two rows"
    return {row["id"]: row for row in rows}


def rows_in_complete_files(folder: Path) -> list[int]:
    counts = []
    for path in folder.glob("*.parquet"):
        try:
            counts.append(pq.read_metadata(path).num_rows)
        except pa.ArrowException:  # cut off by the kill
            pass
    return counts


def assert_vectors_equal(rows: dict[str, dict], ids: list[str], expected: np.ndarray) -> None:
    got = np.array([rows[item]["embedding"] for item in ids], dtype=np.float32)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_a_folder_is_embedded_exactly_as_the_reference_embeds_each_photo(
        ray_address, tiny_checkpoint, reference, photo_folder, tmp_path):
    summary = run(BulkArgs(model=tiny_checkpoint, input=str(photo_folder), output=str(tmp_path / "out")))
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    rows = by_id(table)
    assert sorted(rows) == sorted(photo_ids() + ["broken.jpg"])  # notes.txt left out
    assert (summary.items, summary.errors, summary.skipped) == (len(rows), 1, 0)
    assert rows["broken.jpg"]["embedding"] is None
    assert rows["broken.jpg"]["error"].startswith("cannot decode image")
    raws = photo_raws()
    assert_vectors_equal(rows, photo_ids(), reference.image_embeddings([raws[item] for item in photo_ids()]))
    assert all(rows[item]["error"] is None for item in photo_ids())
    metadata = pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).metadata
    assert metadata[b"siglip.fingerprint"] == f"{weights_fingerprint(tiny_checkpoint)}/float32".encode()


def test_texts_from_jsonl_keep_their_metadata_columns_in_one_parquet_file(
        ray_address, tiny_checkpoint, reference, tmp_path):
    texts = ["a photo of a cat", "Two dogs near a window; 3 people watch.", "", "x" * 2049, "a red car"]
    source = tmp_path / "captions.jsonl"

    def write_jsonl():
        source.write_text("".join(json.dumps({"id": index, "text": text, "shop": f"s{index % 2}",
                                              "price": index * 1.5}) + "\n" for index, text in enumerate(texts)))

    write_jsonl()
    summary = run(BulkArgs(model=tiny_checkpoint, input=str(source), output=str(tmp_path / "texts.parquet")))
    assert (summary.items, summary.errors) == (5, 2)
    assert not (tmp_path / "texts.parquet.parts").exists()
    table = pq.read_table(tmp_path / "texts.parquet")
    assert table.column_names[:3] == ["id", "embedding", "error"]
    rows = by_id(table)
    assert rows["2"]["error"] == "no text: the text field is empty"
    assert rows["3"]["error"] == "the text is 2049 characters; the limit is 2048 (max_text_chars)"
    assert (rows["4"]["shop"], rows["4"]["price"]) == ("s0", 6.0)
    assert_vectors_equal(rows, ["0", "1", "4"], reference.text_embeddings([texts[0], texts[1], texts[4]]))

    # Rerun into the same file after fixing one text and adding one: the file is rewritten
    # with each id once, the fixed row no longer failed.
    texts[2] = "a blue boat"
    texts.append("a white bird")
    write_jsonl()
    again = run(BulkArgs(model=tiny_checkpoint, input=str(source), output=str(tmp_path / "texts.parquet")))
    assert (again.items, again.errors, again.skipped) == (3, 1, 3)
    rows = by_id(pq.read_table(tmp_path / "texts.parquet"))
    assert sorted(rows) == [str(index) for index in range(6)] and rows["3"]["error"]
    assert_vectors_equal(rows, ["0", "2", "5"], reference.text_embeddings([texts[0], texts[2], texts[5]]))


def test_lists_and_tables_name_images_by_path_url_and_data_uri_under_the_url_rules(
        ray_address, tiny_checkpoint, reference, photo_folder, tmp_path):
    [(_, astronaut), (_, coffee), *_] = photos()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "coffee.png").write_bytes(coffee)
    with image_server(astronaut) as server:
        port = server.rsplit(":", 1)[1]
        images = {
            "relative": "images/coffee.png",  # to the table's folder
            "absolute": str(photo_folder / "astronaut.jpg"),
            "data-uri": data_uri(coffee),
            "allowed-url": f"http://localhost:{port}/photo",
            "refused-url": f"http://127.0.0.1:{port}/photo",  # loopback, not in allowed_hosts
            "missing": "images/nowhere.png",
            "not-base64": data_uri(b"") + "@@",
        }
        pq.write_table(pa.table({"id": list(images), "image": list(images.values()),
                                 "tag": [f"t{i}" for i in range(len(images))]}), tmp_path / "items.parquet")
        (tmp_path / "list.txt").write_text("\n".join(["images/coffee.png", f"http://localhost:{port}/photo",
                                                      "", f"http://127.0.0.1:{port}/missing"]) + "\n")
        args = dict(model=tiny_checkpoint, allowed_hosts=("localhost",))
        run(BulkArgs(**args, input=str(tmp_path / "items.parquet"), output=str(tmp_path / "from-table")))
        run(BulkArgs(**args, input=str(tmp_path / "list.txt"), output=str(tmp_path / "from-list")))
    rows = by_id(pq.read_table(tmp_path / "from-table"))
    assert_vectors_equal(rows, ["relative", "absolute", "data-uri", "allowed-url"],
                         reference.image_embeddings([coffee, astronaut, coffee, astronaut]))
    assert rows["relative"]["tag"] == "t0"
    assert "not a public address" in rows["refused-url"]["error"]
    assert "No such file" in rows["missing"]["error"]
    assert "base64" in rows["not-base64"]["error"]
    listed = by_id(pq.read_table(tmp_path / "from-list"))
    assert sorted(listed) == sorted(["images/coffee.png", f"http://localhost:{port}/photo",
                                     f"http://127.0.0.1:{port}/missing"])  # the blank line is no input
    assert_vectors_equal(listed, ["images/coffee.png"], reference.image_embeddings([coffee]))
    assert "not a public address" in listed[f"http://127.0.0.1:{port}/missing"]["error"]


def test_a_rerun_embeds_only_what_failed_or_was_never_written(ray_address, tiny_checkpoint, reference, tmp_path):
    names = [name for name, _ in photos()[:6]]
    for name, raw in photos()[:6]:
        (tmp_path / name).write_bytes(raw)
    (tmp_path / "list.txt").write_text("\n".join(names + ["later.png"]))
    out = tmp_path / "out"
    first = run(BulkArgs(model=tiny_checkpoint, input=str(tmp_path / "list.txt"), output=str(out)))
    assert (first.items, first.errors) == (7, 1)
    # A crash mid-write leaves a truncated file behind; the missing image now exists.
    (out / "truncated.parquet").write_bytes(next(out.glob("*.parquet")).read_bytes()[:100])
    (tmp_path / "later.png").write_bytes(photos()[1][1])
    second = run(BulkArgs(model=tiny_checkpoint, input=str(tmp_path / "list.txt"), output=str(out)))
    assert (second.items, second.errors, second.skipped) == (1, 0, 6)
    assert not (out / "truncated.parquet").exists()
    rows = by_id(pq.read_table(out))
    assert sorted(rows) == sorted(names + ["later.png"])
    assert all(row["error"] is None for row in rows.values())
    assert_vectors_equal(rows, ["later.png"], reference.image_embeddings([photos()[1][1]]))
    with pytest.raises(BulkError, match="made by"):  # another dtype: another model's vectors
        run(BulkArgs(model=tiny_checkpoint, input=str(tmp_path / "list.txt"), output=str(out), dtype="bfloat16"))


def test_a_collection_destination_is_searched_as_the_api_searches_it(
        ray_address, tiny_checkpoint, reference, photo_folder, tmp_path):
    """The input as a file:// URI: the path object-store inputs (s3://, gs://) take."""
    uri, errors = str(tmp_path / "collections"), str(tmp_path / "errors.parquet")
    args = dict(model=tiny_checkpoint, input=photo_folder.as_uri(), output="collection://photos",
                collections_uri=uri, errors=errors)
    summary = run(BulkArgs(**args))
    assert (summary.items, summary.errors) == (len(photo_ids()) + 1, 1)
    assert pq.read_table(errors).column("id").to_pylist() == ["broken.jpg"]
    again = run(BulkArgs(**args))
    assert (again.items, again.skipped) == (1, len(photo_ids()))  # only the broken one retried
    (photo_folder / "broken.jpg").write_bytes(photos()[0][1])  # mended: no failure left to list
    mended = run(BulkArgs(**args))
    (photo_folder / "broken.jpg").write_bytes(BROKEN)
    assert (mended.items, mended.errors) == (1, 0) and not os.path.exists(errors)

    import asyncio

    model = Model(tiny_checkpoint, f"{weights_fingerprint(tiny_checkpoint)}/float32", 32)
    store = CollectionStore(uri, LogitParams.from_pretrained(tiny_checkpoint), 100_000)
    assert asyncio.run(store.describe("photos")).count == len(photo_ids()) + 1
    query = reference.text_embeddings(["a photo of a cat"])
    matches = asyncio.run(store.search("photos", model, query, 5, {}, False))
    raws = photo_raws()
    raws["broken.jpg"] = photos()[0][1]  # as mended
    expected = reference.pair_score(query, reference.image_embeddings([raws[m.id] for m in matches]))[0]
    assert np.abs(np.array([m.score for m in matches]) - expected).max() < 1e-5
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_memory_stays_bounded_on_an_input_larger_than_the_object_store(ray_address, tmp_path):
    """3,000 photos, decoded at 160 px by a tiny checkpoint made for it: 230 MB of pixels
    through an 80 MiB object store, with nothing spilled to disk and the driver's memory flat."""
    import ray
    from ray._private.internal_api import node_stats

    checkpoint = make_checkpoint("tiny", tmp_path / "tiny-160", image_size=160)
    folder = tmp_path / "many"
    folder.mkdir()
    sources = [Image.fromarray(pixels) for pixels in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    for index in range(3000):
        source = sources[index % 4]
        left, top = (index * 7) % (source.width - 200), (index * 5) % (source.height - 150)
        (folder / f"{index:04d}.jpg").write_bytes(encode(source.crop((left, top, left + 200, top + 150)), "JPEG"))
    node = ray.nodes()[0]

    def store():
        return node_stats(node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False).store_stats

    created_before, rss_before = store().cumulative_created_bytes, psutil.Process().memory_info().rss
    summary = run(BulkArgs(model=str(checkpoint), input=str(folder), output=str(tmp_path / "out"), batch_size=50))
    stats = store()
    assert (summary.items, summary.errors) == (3000, 0)
    assert stats.cumulative_created_bytes - created_before > 2.5 * OBJECT_STORE_BYTES  # the test's premise
    assert stats.spilled_bytes_total == 0 and stats.object_store_bytes_fallback == 0
    assert psutil.Process().memory_info().rss - rss_before < 100 * 2**20
    assert pq.read_metadata(next((tmp_path / "out").glob("*.parquet"))).num_rows > 0
    assert sum(pq.read_metadata(path).num_rows for path in (tmp_path / "out").glob("*.parquet")) == 3000


def test_the_command_resumes_after_being_killed(ray_address, tiny_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(120):
        name, raw = photos()[index % len(photos())]
        (folder / f"{index:03d}-{name}").write_bytes(raw + index.to_bytes(4, "big"))
    out = tmp_path / "out"
    command = ["siglip-embed", "--model", tiny_checkpoint, "--input", str(folder), "--output", str(out),
               "--address", ray_address, "--batch-size", "4"]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.parquet"))) < 3 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    written = sum(rows_in_complete_files(out))
    assert 0 < written < 120, written

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    last = finished.stdout.strip().splitlines()[-1]
    items, errors, skipped = map(int, re.match(r"(\d+) items, (\d+) errors, (\d+) skipped", last).groups())
    assert (errors, skipped, items) == (0, written, 120 - written), last
    rows = by_id(pq.read_table(out, columns=["id", "error"]))
    assert len(rows) == 120 and all(row["error"] is None for row in rows.values())


def test_the_command_refuses_what_it_cannot_run(ray_address, tiny_checkpoint, tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"name": "a", "text": "b"}) + "\n")
    refused = subprocess.run([sys.executable, "-m", "deployments.bulk", "--model", tiny_checkpoint,
                              "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "out"),
                              "--address", ray_address],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "has no `id` column" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
