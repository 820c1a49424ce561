"""The encoders' dynamic batcher, without Ray."""

from __future__ import annotations

import asyncio

import pytest

from deployments.core.batcher import Batcher


class RecordingModel:
    """Records the chunks of every batch; each batch waits until `release` lets it finish."""

    def __init__(self):
        self.batches: list[list[list[str]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def run_batch(self, chunks: list[list[str]]) -> list[str]:
        self.batches.append(chunks)
        await self.release.wait()
        return ["+".join(chunk) for chunk in chunks]


async def _busy_with_a_first_batch(batcher: Batcher, model: RecordingModel) -> asyncio.Task:
    """Submits ["a"]; returns once its forward pass runs, held until `model.release` is set."""
    model.release.clear()
    first = asyncio.create_task(batcher.submit(["a"]))
    while not model.batches:
        await asyncio.sleep(0.001)
    return first


def test_what_queues_during_a_forward_pass_shares_the_next_one():
    """Ray's @serve.batch runs these as five batches of one; a busy replica must not."""
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=32, batch_wait_timeout_s=0.001)
        first = await _busy_with_a_first_batch(batcher, model)
        rest = [asyncio.create_task(batcher.submit([name])) for name in "bcdef"]
        await asyncio.sleep(0.05)  # far past the wait: the next batch must not have closed yet
        model.release.set()
        return await first, await asyncio.gather(*rest), model.batches

    first, rest, batches = asyncio.run(run())
    assert (first, rest) == ("a", ["b", "c", "d", "e", "f"])
    assert batches == [[["a"]], [["b"], ["c"], ["d"], ["e"], ["f"]]]


def test_batches_hold_whole_chunks_up_to_the_size_in_items_and_keep_their_order():
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=4, batch_wait_timeout_s=0.01)
        results = await asyncio.gather(*(batcher.submit(chunk) for chunk in
                                         (["a", "b"], ["c"], ["d", "e"], ["f"], ["g", "h", "i", "j", "k"])))
        return results, model.batches

    results, batches = asyncio.run(run())
    assert results == ["a+b", "c", "d+e", "f", "g+h+i+j+k"]
    # ["d", "e"] would make 5 items: it opens the next batch. A chunk larger than a batch runs alone.
    assert batches == [[["a", "b"], ["c"]], [["d", "e"], ["f"]], [["g", "h", "i", "j", "k"]]]


def test_a_lone_chunk_waits_for_companions_no_longer_than_the_timeout():
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=8, batch_wait_timeout_s=0.2)
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(["b"]))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(first, second)
        batcher.batch_wait_timeout_s = 0  # settings change while it runs
        started_alone = loop.time()
        await batcher.submit(["c"])
        return model.batches, loop.time() - started, loop.time() - started_alone

    batches, waited, alone = asyncio.run(run())
    assert batches == [[["a"], ["b"]], [["c"]]]
    assert 0.1 < waited < 1.0
    assert alone < 0.1


def test_a_failed_batch_fails_its_callers_only():
    async def run():
        calls = []

        async def run_batch(chunks):
            calls.append(chunks)
            if len(calls) == 1:
                raise ValueError("model broke")
            return [len(chunk) for chunk in chunks]

        batcher = Batcher(run_batch, max_batch_size=8, batch_wait_timeout_s=0.01)
        failed = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]),
                                      return_exceptions=True)
        return failed, await batcher.submit(["c", "d"])

    failed, after = asyncio.run(run())
    assert [str(error) for error in failed] == ["model broke", "model broke"]
    assert after == 2


def test_a_wrong_number_of_results_is_an_error_not_a_mix_up():
    async def run():
        async def run_batch(chunks):
            return ["only one"]

        batcher = Batcher(run_batch, max_batch_size=8, batch_wait_timeout_s=0.01)
        return await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]),
                                    return_exceptions=True)

    errors = asyncio.run(run())
    assert all(isinstance(error, RuntimeError) for error in errors)


def test_a_cancelled_caller_leaves_the_batch_and_others_are_answered():
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=8, batch_wait_timeout_s=0.001)
        busy = await _busy_with_a_first_batch(batcher, model)
        gone = asyncio.create_task(batcher.submit(["b"]))
        kept = asyncio.create_task(batcher.submit(["c"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        return await busy, await kept, gone.cancelled(), model.batches

    busy, kept, cancelled, batches = asyncio.run(run())
    assert (busy, kept, cancelled) == ("a", "c", True)
    assert batches == [[["a"]], [["c"]]]


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_many_callers_each_get_their_own_result(max_batch_size):
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=max_batch_size, batch_wait_timeout_s=0)
        chunks = [[f"{i}.{k}" for k in range(i % 3 + 1)] for i in range(50)]
        return chunks, await asyncio.gather(*(batcher.submit(chunk) for chunk in chunks))

    chunks, results = asyncio.run(run())
    assert results == ["+".join(chunk) for chunk in chunks]


def test_a_caller_that_goes_away_while_its_batch_waits_for_company_leaves_it():
    async def run():
        model = RecordingModel()
        batcher = Batcher(model.run_batch, max_batch_size=8, batch_wait_timeout_s=0.1)
        gone = asyncio.create_task(batcher.submit(["a"]))
        kept = asyncio.create_task(batcher.submit(["b"]))
        await asyncio.sleep(0.02)  # both wait in the open batch
        gone.cancel()
        first = await kept
        alone = asyncio.create_task(batcher.submit(["c"]))
        await asyncio.sleep(0.02)
        alone.cancel()  # its batch is left empty: it never runs
        await asyncio.sleep(0.15)
        later = await batcher.submit(["d"])
        return first, later, model.batches

    first, later, batches = asyncio.run(run())
    assert (first, later) == ("b", "d")
    assert batches == [[["b"]], [["d"]]]
