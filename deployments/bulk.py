"""`siglip-embed`: embeds a whole photo library, catalogue or crawl at once on Ray Data, with the
serving graph's own preprocessing and encoder code, so that a vector from a bulk job equals the
one the API returns for the same image or text (docs/operations.md, "Bulk embedding").

    siglip-embed --model google/siglip-so400m-patch14-384 --input photos/ --output photos.parquet

Reading and decoding run as CPU tasks, encoding as a pool of encoder actors (one per GPU, or
sized to the cores), writing streams: memory stays bounded however large the input. Every input
gets one output row; a bad item gets its error in its row. Rerunning with the same output
skips the ids already embedded, so a crashed or interrupted job resumes where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from typing import Literal, get_args, get_origin

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from deployments.config import CollectionsConfig, InputLimits, TextEncoderConfig, VisionEncoderConfig
from deployments.core import bulk
from deployments.core.checkpoint import ImageSettings, LogitParams, ModelFacts, weights_bytes, weights_fingerprint
from deployments.core.collection_rules import FINGERPRINT_KEY, MODEL_KEY, CollectionError, Model, resolve_uri
from deployments.core.fetch import ImageUrlPolicy
from deployments.sizing import MAX_CPU_ENCODER_REPLICAS, REPLICA_OVERHEAD_BYTES

logger = logging.getLogger(__name__)

COLLECTION_SCHEME = "collection://"
# Per forward pass. A GPU's throughput levels off from about 64 images
# (benchmarks/reports/gpu_encoders_h200.json); on a CPU, the serving graph's batches.
BATCH_SIZE = {"cuda": {"image": 128, "text": 256},
              "cpu": {"image": VisionEncoderConfig().max_batch_size_on("cpu"),
                      "text": TextEncoderConfig().max_batch_size_on("cpu")}}
# Columns the job adds to the input's: an input column by either name is refused up front.
OUTPUT_COLUMNS = ("embedding", "error")
_PIXELS = "_siglip_pixels"  # between the decode tasks and the encoders only


class BulkError(Exception):
    """A job that cannot start or finish; the message says why, for the user."""


class BulkArgs(BaseModel):
    """What `siglip-embed` takes (its --help says the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Hub id or local folder of a SigLIP checkpoint.")
    input: str = Field(description="A folder of images, a .txt file (one path, URL or text per "
                       "line), or a .jsonl/.parquet file with an `id` column and an `image` or "
                       "`text` column; local or an object-store URI.")
    output: str = Field(description="A .parquet file, a folder of Parquet files, or "
                        "collection://NAME to upsert into a collection.")
    modality: Literal["image", "text"] | None = Field(None, description="Default: image, or the "
                                                      "column a table has.")
    batch_size: int | None = Field(None, ge=1, description="Items per forward pass. Default: "
                                   f"{BATCH_SIZE['cuda']['image']} images or {BATCH_SIZE['cuda']['text']} "
                                   f"texts on a GPU, {BATCH_SIZE['cpu']['image']} or "
                                   f"{BATCH_SIZE['cpu']['text']} on a CPU.")
    address: str = Field("local", description="'local' starts Ray on this machine; 'auto' or "
                         "HOST:PORT joins a running cluster.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPUs when the "
                                                   "cluster has any, else the CPUs.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on GPUs, float32 (the reference's) on CPUs.")
    encoders: int | None = Field(None, ge=1, description="Encoder actors. Default: one per GPU; "
                                 f"on CPUs one per core, at most {MAX_CPU_ENCODER_REPLICAS}.")
    allowed_hosts: tuple[str, ...] = Field((), description="Hosts or networks whose image URLs may "
                                           "be fetched although they are not public (SSRF guard).")
    collections_uri: str = Field(CollectionsConfig().uri, description="Where collection:// "
                                 "destinations live (SIGLIP_COLLECTIONS_URI overrides it).")
    errors: str | None = Field(None, description="For collection:// destinations: a Parquet file "
                               "for the rows that failed. Default: siglip-embed-errors-NAME.parquet.")


@dataclass(frozen=True)
class Summary:
    items: int
    errors: int
    skipped: int
    seconds: float

    def line(self) -> str:
        rate = self.items / self.seconds if self.seconds else 0.0
        return (f"{self.items} items, {self.errors} errors, {self.skipped} skipped (done before), "
                f"{self.seconds:.1f} s, {rate:.2f} items/s")


@dataclass(frozen=True)
class Plan:
    """How the job uses the cluster. Ray's CPU counts here are admission tickets, not cores:
    on CPUs alone the encoders' threads and the decode tasks share the same cores."""

    device: str  # what the encoder actors load onto: "auto" on GPUs, so that a GPU torch
    dtype: str  # cannot use falls back to the CPU with a warning, as in the serving graph
    batch_size: int
    encoders: int
    encoder_gpus: float
    encoder_cpus: float
    torch_threads: int
    decoders: int
    decoder_cpus: float

    @classmethod
    def for_cluster(cls, args: BulkArgs, modality: str, cpus: float, gpus: float) -> "Plan":
        on_gpus = args.device != "cpu" and gpus >= 1
        if args.device == "cuda" and not on_gpus:
            raise BulkError("--device cuda, but the Ray cluster has no GPU")
        kind = "cuda" if on_gpus else "cpu"
        common = {"dtype": args.dtype if args.dtype != "auto" else ("bfloat16" if on_gpus else "float32"),
                  "batch_size": args.batch_size or BATCH_SIZE[kind][modality]}
        cores = max(1, int(cpus))
        if on_gpus:
            # A core per GPU feeds it batches; the other cores decode.
            encoders = args.encoders or int(gpus)
            return cls(device=args.device, encoders=encoders, encoder_gpus=1.0, encoder_cpus=1.0,
                       torch_threads=1, decoders=max(1, cores - encoders), decoder_cpus=1.0, **common)
        # CPUs alone: as in the serving graph, single-thread encoders, one per core, wasted the
        # least CPU per image (up to MAX_CPU_ENCODER_REPLICAS copies of the weights, then more
        # threads each); decode tasks on half the cores run between their forward passes
        # (docs/performance.md, "Bulk embedding").
        encoders = args.encoders or min(cores, MAX_CPU_ENCODER_REPLICAS)
        return cls(device="cpu", encoders=encoders, encoder_gpus=0.0, encoder_cpus=cores / 2 / encoders,
                   torch_threads=max(1, cores // encoders), decoders=max(1, cores // 2), decoder_cpus=1.0,
                   **common)


# ---- Sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    dataset: object  # ray.data.Dataset: rows of `id`, `column` and the metadata columns
    column: str  # "image" or "text": what each row holds
    base: str  # the folder relative paths in the rows start from


def open_source(location: str, modality: str | None) -> Source:
    import ray.data as rd

    fs, path = bulk.filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise BulkError(f"--input {location}: no such file or folder")
    base = posixpath.dirname(location) if bulk.is_uri(location) else os.path.dirname(os.path.abspath(location))
    if info.type == pafs.FileType.Directory:
        if modality == "text":
            raise BulkError("--input is a folder of images; texts come in a .txt, .jsonl or .parquet file")
        return Source(_listed(_image_files(fs, path, location), "image"), "image", location)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        dataset = rd.read_parquet(location) if suffix == ".parquet" else rd.read_json(location)
        column = _item_column(dataset.schema().names, modality, location)
        return Source(dataset.map_batches(_ids_as_strings, batch_format="pyarrow"), column, base)
    column = modality or "image"
    with fs.open_input_stream(path) as stream:
        lines = [line.rstrip("\r") for line in stream.read().decode().split("\n")]
    items = [line.strip() if column == "image" else line for line in lines if line.strip()]
    return Source(_listed(pa.table({"id": items, column: items}), column), column, base)


def _image_files(fs: pafs.FileSystem, path: str, location: str) -> pa.Table:
    """Every image below the folder (by suffix), its id the path relative to it with '/'."""
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    relative = sorted(posixpath.relpath(entry.path, path) if bulk.is_uri(location)
                      else os.path.relpath(entry.path, path).replace(os.sep, "/")
                      for entry in found if entry.type == pafs.FileType.File
                      and entry.path.lower().endswith(bulk.IMAGE_SUFFIXES))
    root = location if bulk.is_uri(location) else path  # absolute: workers run elsewhere
    return pa.table({"id": relative, "image": [bulk.join(root, name) for name in relative]})


def _listed(table: pa.Table, column: str):
    import ray.data as rd

    if table.num_rows == 0:
        raise BulkError(f"--input holds no {column}s")
    return rd.from_arrow(table)


def _item_column(names: list[str], modality: str | None, location: str) -> str:
    if "id" not in names:
        raise BulkError(f"--input {location} has no `id` column (it has: {', '.join(names)})")
    if clash := [name for name in OUTPUT_COLUMNS if name in names]:
        raise BulkError(f"--input {location} has a column named {clash[0]!r}, which the output uses; rename it")
    candidates = [modality] if modality else [name for name in ("image", "text") if name in names]
    if len(candidates) != 1 or candidates[0] not in names:
        raise BulkError(f"--input {location} needs one `image` or `text` column (or --modality "
                        f"to choose); it has: {', '.join(names)}")
    return candidates[0]


def _ids_as_strings(batch: pa.Table) -> pa.Table:
    index = batch.schema.get_field_index("id")
    return batch.set_column(index, "id", batch.column("id").cast(pa.string()))


# ---- The work, as Ray Data runs it ------------------------------------------------------


def _prepare_images(batch: pa.Table, settings: ImageSettings, limits: InputLimits,
                    url_policy: ImageUrlPolicy, base: str) -> pa.Table:
    """A decode task: each row's image read, decoded and resized, or its error."""
    from ray.data.extensions import ArrowTensorArray

    reader = bulk.ImageReader(limits, url_policy, base)
    pixels, errors = bulk.prepare_images(reader, batch.column("image").to_pylist(), settings, limits)
    return (batch.drop_columns(["image"]).append_column(_PIXELS, ArrowTensorArray.from_numpy(pixels))
            .append_column("error", pa.array(errors, pa.string())))


class _Encoder:
    """An encoder actor: the serving graph's encoder core, loaded once, run on batch after batch."""

    def __init__(self, model: str, column: str, plan: Plan, identity: dict[bytes, bytes],
                 dimensions: int, max_text_chars: int):
        import torch

        from deployments.core.encoders import TextEncoderCore, VisionEncoderCore

        torch.set_num_threads(plan.torch_threads)
        core_class = VisionEncoderCore if column == "image" else TextEncoderCore
        self._core = core_class.from_pretrained(model, plan.device, plan.dtype)
        self._column, self._batch_size = column, plan.batch_size
        self._identity, self._dimensions, self._max_text_chars = identity, dimensions, max_text_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._column == "image":
            pixels = batch.column(_PIXELS)
            items = (pa.concat_arrays(pixels.chunks) if pixels.num_chunks > 1 else pixels.chunk(0)).to_numpy()
            errors = batch.column("error").to_pylist()
            rest = batch.drop_columns([_PIXELS, "error"])
        else:
            items = batch.column("text").to_pylist()
            errors = bulk.check_texts(items, self._max_text_chars)
            rest = batch.drop_columns(["text"])
        vectors = bulk.encode_valid(self._core.encode, items, errors, self._dimensions, self._batch_size)
        others = [name for name in rest.column_names if name != "id"]
        return pa.Table.from_arrays(
            [rest.column("id"), bulk.embedding_column(vectors, errors), pa.array(errors, pa.string()),
             *(rest.column(name) for name in others)],
            names=["id", *OUTPUT_COLUMNS, *others]).replace_schema_metadata(self._identity)


def build_dataset(source: Source, done: set[str], plan: Plan, model: str, identity: dict[bytes, bytes],
                  dimensions: int, url_policy: ImageUrlPolicy):
    """The job's dataset: the source's rows not yet done, each prepared and encoded."""
    import ray.data as rd
    from ray.data.expressions import col

    limits = InputLimits()
    dataset = source.dataset
    if done:
        dataset = dataset.filter(expr=col("id").not_in(sorted(done)))
    # Blocks of one forward pass each: a single-file input would otherwise be one block,
    # decoded by one task.
    dataset = dataset.repartition(target_num_rows_per_block=plan.batch_size)
    if source.column == "image":
        dataset = dataset.map_batches(
            _prepare_images, batch_format="pyarrow", num_cpus=plan.decoder_cpus,
            compute=rd.TaskPoolStrategy(size=plan.decoders),
            fn_kwargs={"settings": ImageSettings.from_pretrained(model), "limits": limits,
                       "url_policy": url_policy, "base": source.base})
    return dataset.map_batches(
        _Encoder, batch_format="pyarrow", batch_size=plan.batch_size,
        compute=rd.ActorPoolStrategy(size=plan.encoders), num_cpus=plan.encoder_cpus,
        num_gpus=plan.encoder_gpus,
        # The weights' memory, asked of Ray so that encoders never crowd a node's RAM. It also
        # keeps Ray from fusing the decode tasks into the encoder actors, where decoding would
        # wait for each forward pass instead of overlapping it.
        memory=_encoder_memory(model),
        fn_constructor_kwargs={"model": model, "column": source.column, "plan": plan,
                               "identity": identity, "dimensions": dimensions,
                               "max_text_chars": limits.max_text_chars})


def _encoder_memory(model: str) -> int:
    return REPLICA_OVERHEAD_BYTES + (weights_bytes(model) or 0)


# ---- Destinations ----------------------------------------------------------------------


class ParquetDestination:
    """A folder of Parquet files, or one file (written as a folder of parts beside it, then
    merged into it). Ray writes each file straight to its final name, so a crash can leave a
    truncated one: a rerun deletes those, keeps the rows embedded, and drops the rows that
    failed, which it embeds again; each input ends with exactly one row."""

    def __init__(self, location: str, identity: dict[bytes, bytes]):
        self.location, self._identity = location, identity
        self.single_file = location.endswith(".parquet")
        folder = location + ".parts" if self.single_file else location
        self._fs, self._folder = bulk.filesystem(folder)
        self._folder_location = folder
        self._before: set[str] = set()

    def _files(self) -> list[str]:
        found = self._fs.get_file_info(pafs.FileSelector(self._folder, allow_not_found=True))
        return sorted(entry.path for entry in found
                      if entry.type == pafs.FileType.File and entry.base_name.endswith(".parquet"))

    def _check_model(self, schema: pa.Schema, where: str) -> None:
        stored = (schema.metadata or {}).get(FINGERPRINT_KEY)
        if stored != self._identity[FINGERPRINT_KEY]:
            made_by = (schema.metadata or {}).get(MODEL_KEY, b"an unknown model").decode()
            raise BulkError(f"{where} holds embeddings made by {made_by} ({(stored or b'?').decode()}), "
                            f"not by this model and dtype: choose another --output")

    def prepare(self) -> set[str]:
        """The ids already embedded; partial files deleted, failed rows dropped."""
        done: set[str] = set()
        for path in self._files():
            try:
                footer = pq.read_metadata(path, filesystem=self._fs)
            except (OSError, pa.ArrowException):
                logger.warning("deleting %s: an unfinished file from an interrupted run", path)
                self._fs.delete_file(path)
                continue
            self._check_model(footer.schema.to_arrow_schema(), path)
            embedded, all_embedded = _embedded_ids(self._fs, path)
            if not all_embedded:
                table = pq.read_table(path, filesystem=self._fs)
                self._rewrite(path, table.filter(pa.compute.is_null(table.column("error"))))
            done.update(embedded)
        if self.single_file:
            fs, path = bulk.filesystem(self.location)
            if fs.get_file_info(path).type == pafs.FileType.File:
                self._check_model(pq.read_schema(path, filesystem=fs), self.location)
                done.update(_embedded_ids(fs, path)[0])
        self._before = set(self._files())
        return done

    def _rewrite(self, path: str, table: pa.Table) -> None:
        """Replaces the file in one move; readers skip the hidden temporary name."""
        pq.write_table(table, _hidden(path), filesystem=self._fs)
        self._fs.move(_hidden(path), path)

    def write(self, dataset) -> tuple[int, int]:
        """Writes the job's rows; returns how many it wrote and how many failed."""
        # Writing a block takes milliseconds: it asks for no CPU, so that it never waits
        # behind the decode tasks and encoders, which hold all of them.
        dataset.write_parquet(self._folder_location, mode="append", ray_remote_args={"num_cpus": 0})
        rows = failed = 0
        for path in self._files():
            if path not in self._before:
                errors = pq.read_table(path, columns=["error"], filesystem=self._fs).column("error")
                rows, failed = rows + len(errors), failed + len(errors) - errors.null_count
        if self.single_file:
            self._merge()
        return rows, failed

    def _merge(self) -> None:
        """The previous file's embedded rows and the parts, streamed into one file that is
        then moved into place."""
        fs, path = bulk.filesystem(self.location)
        # (filesystem, path, whether its failed rows go): those of the previous file were
        # embedded again, into the parts.
        sources = [(self._fs, part, False) for part in self._files()]
        if fs.get_file_info(path).type == pafs.FileType.File:
            sources.insert(0, (fs, path, True))
        if sources:
            schema = pq.read_schema(sources[0][1], filesystem=sources[0][0]).with_metadata(self._identity)
            with pq.ParquetWriter(_hidden(path), schema, filesystem=fs) as writer:
                for source_fs, source, drop_failed in sources:
                    with source_fs.open_input_file(source) as stream:
                        for batch in pq.ParquetFile(stream).iter_batches(batch_size=4096):
                            rows = pa.Table.from_batches([batch])
                            if drop_failed:
                                rows = rows.filter(pa.compute.is_null(rows.column("error")))
                            writer.write_table(rows.cast(schema))
            fs.move(_hidden(path), path)
        self._fs.delete_dir(self._folder)


def _hidden(path: str) -> str:
    """Where a file is written before it is moved to `path`: a name readers skip."""
    return posixpath.join(posixpath.dirname(path), "." + posixpath.basename(path))


def _embedded_ids(fs: pafs.FileSystem, path: str) -> tuple[list[str], bool]:
    """A Parquet file's ids that were embedded, and whether all of its rows were; read from
    its id and error columns alone."""
    rows = pq.read_table(path, columns=["id", "error"], filesystem=fs)
    embedded = pa.compute.is_null(rows.column("error"))
    return rows.filter(embedded).column("id").to_pylist(), pa.compute.all(embedded).as_py()


class CollectionDestination:
    """collection://NAME: the embedded rows upserted into a collection that the serving graph
    searches (created if new, refused if another model's), the failed rows into a Parquet
    file. The job's driver writes, in commits of WRITE_ROWS rows."""

    WRITE_ROWS = 1024

    def __init__(self, name: str, uri: str, model: Model, params: LogitParams, column: str,
                 errors_path: str | None):
        from deployments.core.collections import CollectionStore

        self.name, self._model, self._modality = name, model, column
        self.errors_path = errors_path or f"siglip-embed-errors-{name}.parquet"
        self._threshold = CollectionsConfig().index_threshold
        self._store = CollectionStore(resolve_uri(uri), params, self._threshold)

    def prepare(self) -> set[str]:
        return asyncio.run(self._prepare())

    async def _prepare(self) -> set[str]:
        try:
            await self._store.create(self.name, self._model)
        except CollectionError as error:
            if error.code != "collection_exists":
                raise BulkError(error.message) from None
        try:
            return set(await self._store.ids(self.name, self._model))
        except CollectionError as error:
            raise BulkError(error.message) from None

    def write(self, dataset) -> tuple[int, int]:
        return asyncio.run(self._write(dataset))

    async def _write(self, dataset) -> tuple[int, int]:
        rows = failed = 0
        errors_writer = None
        errors_fs, errors_path = bulk.filesystem(self.errors_path)
        if errors_fs.get_file_info(errors_path).type == pafs.FileType.File:
            errors_fs.delete_file(errors_path)  # a previous run's: its failures are retried now
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=self.WRITE_ROWS):
                stored, metadata, rejected = self._split(batch)
                if stored.num_rows:
                    vectors = stored.column("embedding").combine_chunks().flatten().to_numpy()
                    await self._store.upsert(
                        self.name, self._model, stored.column("id").to_pylist(),
                        vectors.reshape(stored.num_rows, -1), [self._modality] * stored.num_rows,
                        metadata, index_when_large=False)
                if rejected.num_rows:
                    errors_writer = errors_writer or pq.ParquetWriter(errors_path, rejected.schema,
                                                                      filesystem=errors_fs)
                    errors_writer.write_table(rejected)
                rows += batch.num_rows
                failed += rejected.num_rows
        finally:
            if errors_writer is not None:
                errors_writer.close()
        info = await self._store.describe(self.name)
        if info.count >= self._threshold:
            await self._store.build_index(self.name)  # covers the rows just added
        return rows, failed

    @staticmethod
    def _split(batch: pa.Table) -> tuple[pa.Table, list[dict | None], pa.Table]:
        """The rows to store (id, embedding) with their metadata columns as JSON objects, and
        the rows that failed (id, error and the metadata columns), metadata over the API's
        limit among them."""
        others = [name for name in batch.column_names if name not in ("id", *OUTPUT_COLUMNS)]
        errors = batch.column("error").to_pylist()
        metadata = []
        for index, row in enumerate(batch.select(others).to_pylist()):
            value, problem = bulk.metadata_json(row)
            metadata.append(value)
            errors[index] = errors[index] or problem
        batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
        failed = pa.array([error is not None for error in errors])
        stored = batch.filter(pa.compute.invert(failed)).select(["id", "embedding"])
        kept = [value for value, error in zip(metadata, errors) if error is None]
        return stored, kept, batch.filter(failed).drop_columns(["embedding"])


# ---- The job -----------------------------------------------------------------------------


def connect(address: str) -> None:
    """Ray on this machine ('local': always a new instance, never one a stale
    /tmp/ray/ray_current_cluster names), or a running cluster; kept if already connected."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        # Ray keeps as many idle workers as CPUs, and the encoders and Ray Data's own actors
        # count among them: past that it killed each decode task's worker a second after its
        # task, and started another for the next, re-importing pyarrow, Pillow and torch's
        # neighbours each time (22 worker starts in a 90 s job on 2 cores).
        ray.init(address="local", include_dashboard=False,
                 _system_config={"num_workers_soft_limit": (os.cpu_count() or 1) + 16})
    else:
        ray.init(address=address)


def run(args: BulkArgs) -> Summary:
    """Runs the whole job on the connected (or a new local) Ray; raises BulkError."""
    import ray

    started = time.perf_counter()
    connect(args.address)
    source = open_source(args.input, args.modality)
    resources = ray.cluster_resources()
    plan = Plan.for_cluster(args, source.column, resources.get("CPU", 1.0), resources.get("GPU", 0.0))
    facts = ModelFacts.from_pretrained(args.model)
    # What the collections call a model: its weights and the dtype they ran in.
    model = Model(args.model, f"{weights_fingerprint(args.model)}/{plan.dtype}", facts.embedding_dimensions)
    identity = {MODEL_KEY: model.name.encode(), FINGERPRINT_KEY: model.fingerprint.encode()}
    if args.output.startswith(COLLECTION_SCHEME):
        destination = CollectionDestination(args.output.removeprefix(COLLECTION_SCHEME), args.collections_uri,
                                             model, LogitParams.from_pretrained(args.model), source.column,
                                             args.errors)
    else:
        destination = ParquetDestination(args.output, identity)
    done = destination.prepare()
    url_policy = ImageUrlPolicy(allowed_hosts=args.allowed_hosts)
    dataset = build_dataset(source, done, plan, args.model, identity, model.dimensions, url_policy)
    rows, errors = destination.write(dataset)
    return Summary(rows, errors, len(done), time.perf_counter() - started)


def _literal_values(annotation) -> list[str]:
    """The strings of a Literal, or of an optional one."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [value for member in get_args(annotation) for value in _literal_values(member)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siglip-embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in BulkArgs.model_fields.items():
        options = {"help": field.description, "required": field.is_required()}
        if name in ("batch_size", "encoders"):
            options["type"] = int
        if name == "allowed_hosts":
            options.update(nargs="+", default=())
        options["choices"] = _literal_values(field.annotation) or None
        parser.add_argument("--" + name.replace("_", "-"), **{k: v for k, v in options.items() if v is not None})
    return parser


def main(argv: list[str] | None = None) -> None:
    values = vars(_parser().parse_args(argv))
    args = BulkArgs(**{name: value for name, value in values.items() if value is not None})
    try:
        summary = run(args)
    except BulkError as error:
        sys.exit(f"siglip-embed: error: {error}")
    except KeyboardInterrupt:
        sys.exit("siglip-embed: interrupted; run the same command again to resume")
    print(summary.line())


if __name__ == "__main__":
    main()
