"""The graph behind Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1), the opt-in of
docs/operations.md on Linux: the same answers and the same errors as behind Ray's Python proxy, and no
HAProxy process left holding the port after shutdown."""

import pytest

from tests.support.apps import run_check_script


@pytest.mark.own_cluster
def test_the_graph_answers_the_same_behind_haproxy(tiny_checkpoint):
    report = run_check_script("haproxy_check.py", tiny_checkpoint, "haproxy_pids")
    assert report["haproxy_pids"], "no HAProxy process: the check ran behind the Python proxy"
    assert report["health"] == 200
    assert report["image_max_abs_diff"] < 1e-5
    assert report["concurrent_max_abs_diff"] < 1e-5
    undecodable, too_big = report["errors"]["undecodable"], report["errors"]["too_big"]
    assert undecodable["status"] == 400 and undecodable["body"]["error"]["code"] == "invalid_image"
    assert too_big["status"] == 413 and "(max_body_bytes)" in too_big["body"]["error"]["message"]
    assert report["haproxy_pids_after_shutdown"] == []
