"""How the ingress turns stage failures into answers, without a cluster: retries after a
replica death, 503 + Retry-After on backpressure, 504 on timeout, 400 on a bad image;
and abandoned requests cancel every stage call they sent, and send no more."""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from deployments.core.images import ImageInputError
from deployments.errors import ApiError
from deployments.stage_calls import RequestPolicy, StageAttempt, call_parts, run_stage_calls

FAST = RequestPolicy(timeout_s=5, retries=2, retry_backoff_s=0.01)


def _calls(*outcomes):
    """A stage_calls factory whose n-th attempt returns outcomes[n] (an exception raises)."""
    attempts = []

    def stage_calls(attempt):
        outcome = outcomes[min(len(attempts), len(outcomes) - 1)]
        attempts.append(outcome)

        async def call():
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome == "slow":
                await asyncio.sleep(60)
            return outcome

        return [call(), None]

    return stage_calls, attempts


def _run(stage_calls, policy=FAST):
    return asyncio.run(run_stage_calls(stage_calls, policy))


# Over Ray's actor calls a dead replica raises ActorDiedError; over Serve's gRPC transport, a
# replica it cannot reach raises ActorUnavailableError, as Serve turns gRPC's UNAVAILABLE.
@pytest.mark.parametrize("death", [ActorDiedError(),
                                   ActorUnavailableError("Actor is unavailable.", None)])
def test_a_replica_death_is_retried_until_the_call_succeeds(death):
    stage_calls, attempts = _calls(death, death, "embeddings")
    assert _run(stage_calls) == ["embeddings", None]
    assert len(attempts) == 3


def test_retries_are_bounded_then_503_with_retry_after():
    stage_calls, attempts = _calls(ActorDiedError())
    with pytest.raises(ApiError) as raised:
        _run(stage_calls)
    assert len(attempts) == FAST.retries + 1
    assert raised.value.status == 503 and raised.value.retry_after_s


def test_backpressure_is_not_retried_and_answers_at_once_with_retry_after():
    stage_calls, attempts = _calls(BackPressureError(num_queued_requests=9, max_queued_requests=8))
    with pytest.raises(ApiError) as raised:
        _run(stage_calls)
    assert len(attempts) == 1
    assert raised.value.status == 503 and raised.value.info.type == "overloaded_error"
    response = raised.value.response()
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert set(json.loads(response.body)["error"]) == {"message", "type", "param", "code"}


def test_a_request_past_its_timeout_gets_504():
    stage_calls, _ = _calls("slow")
    with pytest.raises(ApiError) as raised:
        _run(stage_calls, RequestPolicy(timeout_s=0.05, retries=0))
    assert raised.value.status == 504 and raised.value.info.type == "timeout_error"


def test_a_bad_image_is_a_400_and_not_retried():
    stage_calls, attempts = _calls(ImageInputError("input[1]", "not an image"))
    with pytest.raises(ApiError) as raised:
        _run(stage_calls)
    assert (raised.value.status, raised.value.info.param, len(attempts)) == (400, "input[1]", 1)


def test_other_failures_are_not_retried():
    stage_calls, attempts = _calls(RuntimeError("a bug"))
    with pytest.raises(RuntimeError):
        _run(stage_calls)
    assert len(attempts) == 1


def test_a_replica_death_reported_by_serve_as_an_upstream_crash_is_retried():
    """Serve re-raises a dead upstream replica as a RayServeException caused by it."""
    from ray.serve.exceptions import RayServeException

    def upstream_crash():
        try:
            raise ActorDiedError()
        except ActorDiedError as died:
            try:
                raise RayServeException("an upstream actor died") from died
            except RayServeException as wrapped:
                return wrapped

    stage_calls, attempts = _calls(upstream_crash(), "scores")
    assert _run(stage_calls) == ["scores", None]
    assert len(attempts) == 2


class FakeStage:
    """A stage method: each `.remote(*args)` call answers `answer(*args)` (by default, its args)
    after `seconds`, and records its args and whether it was cancelled."""

    def __init__(self, seconds: float, answer=lambda *args: args):
        self.seconds = seconds
        self.answer = answer
        self.calls: list[tuple] = []
        self.cancelled: list[bool] = []

    def remote(self, *args):
        stage, index = self, len(self.cancelled)
        self.calls.append(args)
        self.cancelled.append(False)

        class Call:
            def __await__(self):
                return asyncio.sleep(stage.seconds, stage.answer(*args)).__await__()

            def cancel(self):
                stage.cancelled[index] = True

        return Call()


def _pixels_then_embeddings(preprocess: FakeStage, encode: FakeStage):
    """As the ingress sends them: the encoder's call goes out, with the pixels themselves, once
    the preprocessor's answers."""
    def stage_calls(attempt: StageAttempt):
        async def pixels_then_embeddings():
            return await attempt.send(encode, await attempt.send(preprocess, "image"))
        return [pixels_then_embeddings()]
    return stage_calls


async def _client_goes_away(stage_calls, then_wait_s: float = 0) -> None:
    """Starts the request, cancels it as Serve does when its client disconnects, then waits."""
    request = asyncio.create_task(run_stage_calls(stage_calls, FAST))
    await asyncio.sleep(0.01)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await asyncio.sleep(then_wait_s)


def test_a_request_whose_client_goes_away_while_its_images_decode_sends_no_encoder_call():
    preprocess, encode = FakeStage(0.2), FakeStage(0)
    asyncio.run(_client_goes_away(_pixels_then_embeddings(preprocess, encode), then_wait_s=0.3))
    assert preprocess.cancelled == [True] and encode.calls == []


def test_a_request_whose_client_goes_away_while_its_images_encode_cancels_every_call_it_sent():
    preprocess, encode = FakeStage(0, lambda image: "pixels"), FakeStage(60)
    asyncio.run(_client_goes_away(_pixels_then_embeddings(preprocess, encode)))
    assert encode.calls == [("pixels",)] and encode.cancelled == [True]


def test_a_request_past_its_timeout_cancels_every_stage_call_it_sent():
    preprocess, encode = FakeStage(0), FakeStage(60)
    with pytest.raises(ApiError):
        _run(_pixels_then_embeddings(preprocess, encode), RequestPolicy(timeout_s=0.05, retries=0))
    assert encode.cancelled == [True]


def test_a_request_answered_cancels_nothing_and_hands_each_stage_its_inputs_by_value():
    preprocess, encode = FakeStage(0, lambda image: f"pixels of {image}"), FakeStage(0)
    [result] = _run(_pixels_then_embeddings(preprocess, encode))
    assert result == ("pixels of image",)  # the encoder's args: the pixels, not a call
    assert preprocess.cancelled == [False] and encode.cancelled == [False]


def _texts_then_scores(encode_texts: FakeStage, fuse: FakeStage, preprocess: FakeStage | None = None):
    """As classify sends them: the texts' embeddings are awaited before the fusion call is sent."""
    def stage_calls(attempt: StageAttempt):
        async def texts_then_scores():
            labels = await attempt.send(encode_texts, ["a label"])
            return await attempt.send(fuse, labels)
        return [texts_then_scores(), attempt.send(preprocess, "image") if preprocess else None]
    return stage_calls


def test_a_request_whose_client_goes_away_before_its_texts_are_encoded_sends_no_more_calls():
    encode_texts, fuse = FakeStage(0.2), FakeStage(0)
    asyncio.run(_client_goes_away(_texts_then_scores(encode_texts, fuse), then_wait_s=0.3))  # past the texts' answer
    assert encode_texts.cancelled == [True] and fuse.calls == []


def test_a_stage_that_fails_while_texts_are_encoded_stops_the_request_sending_more_calls():
    encode_texts, fuse = FakeStage(0.2), FakeStage(0)
    bad_image = FakeStage(0, lambda *_: (_ for _ in ()).throw(ImageInputError("input[0]", "not an image")))

    async def request_then_wait():
        with pytest.raises(ApiError):
            await run_stage_calls(_texts_then_scores(encode_texts, fuse, bad_image), FAST)
        await asyncio.sleep(0.3)  # past the text call's answer

    asyncio.run(request_then_wait())
    assert encode_texts.cancelled == [True] and fuse.calls == []


@pytest.mark.parametrize("count,most,sizes", [(1, 4, [1]), (4, 4, [4]), (5, 4, [2, 3]),
                                              (10, 8, [5, 5]), (9, 4, [3, 3, 3]), (17, 8, [5, 6, 6])])
def test_a_requests_items_go_in_the_fewest_calls_of_near_equal_sizes(count, most, sizes):
    parts = call_parts(count, most)
    assert [part.stop - part.start for part in parts] == sizes
    assert [item for part in parts for item in range(count)[part]] == list(range(count))
