"""How the Ingress's handles pick a replica for each stage call.

Ray Serve's default router picks two random replicas and sends the call to the one with the
shorter queue, as its cache of queue lengths has it. It adds a call to that cache only once the
call is sent, after the routing loop has gone on to the next one. So the calls one request
makes at once (images_per_call, texts_per_call) all see the same queue lengths, and two of them
sent to two idle replicas landed on the same one in 16 requests of 40: that replica then
encodes both parts in a row while the other waits. This router counts the calls it has chosen
a replica for and not yet sent, so the next call goes elsewhere.
"""

from __future__ import annotations

import random
import time
from collections import deque

from ray.serve.request_router import (FIFOMixin, LocalityMixin, PendingRequest, ReplicaID,
                                      RequestRouter, RunningReplica)

ROUTER_PATH = "deployments.routing:SpreadingRouter"
# Deployment options that route calls to the deployment with SpreadingRouter.
SPREADING_OPTIONS = {"request_router_config": {"request_router_class": ROUTER_PATH}}


class SpreadingRouter(FIFOMixin, LocalityMixin, RequestRouter):
    """Power of two choices, as Ray's default, with the calls this router chose a replica for
    and has not yet sent counted in that replica's queue."""

    # A choice whose call was never sent (its replica was full, or the caller gave up) stops
    # counting after this long; a sent call follows its choice within one event-loop turn.
    CHOICE_TTL_S = 1.0

    def initialize_state(self, **kwargs) -> None:
        self._unsent: dict[ReplicaID, deque[float]] = {}  # when each unsent choice was made

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """The less loaded of two random replicas (nearest ones first, as Ray's router), then
        the other as a fallback should the first turn out to be full."""
        candidate_ids = list(self.apply_locality_routing(pending_request=pending_request))
        if not candidate_ids:
            return []
        pair = [self.curr_replicas[replica_id] for replica_id in
                random.sample(candidate_ids, min(2, len(candidate_ids)))]
        pair.sort(key=self._expected_queue_len)  # stable: random order among equals
        self._unsent.setdefault(pair[0].replica_id, deque()).append(time.monotonic())
        return [[replica] for replica in pair]

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)  # the queue length cache now counts this call
        unsent = self._unsent.get(replica_id)
        if unsent:
            unsent.popleft()

    def _expected_queue_len(self, replica: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(replica.replica_id) or 0
        unsent = self._unsent.get(replica.replica_id)
        expired = time.monotonic() - self.CHOICE_TTL_S
        while unsent and unsent[0] < expired:
            unsent.popleft()
        if unsent is not None and not unsent:  # so that replicas gone long ago leave no entry
            del self._unsent[replica.replica_id]
        return cached + len(unsent or ())
