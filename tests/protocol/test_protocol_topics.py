"""Topic layout: builders, strict parser, route checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.protocol.errors import DecodeError, EncodeError, RouteError
from fedward.protocol.messages import (
    Ack,
    AckStatus,
    DeviceStatus,
    EnrolAck,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    ModelDownload,
)
from fedward.protocol.topics import (
    Direction,
    TopicInfo,
    TopicKind,
    check_route,
    device_filter,
    device_topic,
    model_filter,
    model_topic,
    parse_topic,
)
from fedward.protocol.transport import topic_matches

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(sorted(k for k in TopicKind if k is not TopicKind.MODEL)),
    study=ids,
    device=ids,
)
def test_device_topics_round_trip_and_match_their_filter(kind, study, device):
    # Execute
    topic = device_topic(kind, study, device)
    info = parse_topic(topic)
    # Assert
    assert info == TopicInfo(kind, study, device_id=device)
    assert topic_matches(device_filter(kind, study), topic)


@settings(max_examples=50, deadline=None)
@given(study=ids, version=st.integers(0, 10**18 - 1), subset=ids)
def test_model_topics_round_trip(study, version, subset):
    # Execute
    topic = model_topic(study, version, subset)
    # Assert
    assert parse_topic(topic) == TopicInfo(
        TopicKind.MODEL, study, model_version=version, subset_id=subset
    )
    assert topic_matches(model_filter(study), topic)
    assert topic_matches(model_filter(study, subset), topic)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fedward",
        "fedward/v1/s/update",
        "fedward/v1/s/update/d/extra",
        "fedward/v2/s/update/d",
        "other/v1/s/update/d",
        "fedward/v1/s/unknown/d",
        "fedward/v1/s/update/+",
        "fedward/v1/s/update/#",
        "fedward/v1/+/update/d",
        "fedward/v1/s/update/",
        "fedward/v1//update/d",
        "fedward/v1/s/update/d\n",
        "fedward/v1/s/update/" + "x" * 65,
        "fedward/v1/s/update/$SYS",
        "fedward/v1/s/update/dé",
        "fedward/v1/s/model/01/sub",
        "fedward/v1/s/model/-1/sub",
        "fedward/v1/s/model/1",
        "fedward/v1/s/model/1/sub/x",
        "/fedward/v1/s/update/d",
    ],
)
def test_parser_rejects_junk_and_injection(topic):
    # Execute / Assert
    with pytest.raises(DecodeError):
        parse_topic(topic)


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 65, "a b", "$SYS"])
def test_builders_refuse_ids_that_could_inject(bad):
    # Execute / Assert
    with pytest.raises(EncodeError):
        device_topic(TopicKind.UPDATE, "study", bad)
    with pytest.raises(EncodeError):
        device_topic(TopicKind.UPDATE, bad, "dev")
    with pytest.raises(EncodeError):
        model_topic("study", 1, bad)


def test_builders_refuse_wrong_kinds_and_versions():
    # Execute / Assert
    with pytest.raises(EncodeError):
        device_topic(TopicKind.MODEL, "s", "d")
    with pytest.raises(EncodeError):
        model_topic("s", True, "sub")  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        model_topic("s", -1, "sub")


def test_directions():
    # Assert
    assert TopicKind.UPDATE.direction is Direction.UPLINK
    assert TopicKind.TASK.direction is Direction.DOWNLINK
    assert TopicKind.MODEL.direction is Direction.DOWNLINK


def test_route_check_binds_ids_to_topic():
    # Prepare
    hb_topic = parse_topic(device_topic(TopicKind.HEARTBEAT, "s", "dev1"))
    ack_topic = parse_topic(device_topic(TopicKind.ACK, "s", "dev1"))
    model = parse_topic(model_topic("s", 4, "small"))
    # Execute / Assert: matching routes pass
    check_route(hb_topic, Heartbeat(device_id="dev1", status=DeviceStatus.IDLE))
    check_route(hb_topic, ErrorMessage(code=ErrorCode.BUDGET_EXHAUSTED, detail="t1 spent"))
    check_route(ack_topic, Ack(task_id="t", status=AckStatus.MERGED))
    check_route(ack_topic, EnrolAck(accepted=True))
    check_route(model, ModelDownload(model_version=4, subset_id="small", names=("w",)))
    # spoofed device, wrong kind, wrong version
    with pytest.raises(RouteError):
        check_route(hb_topic, Heartbeat(device_id="dev2", status=DeviceStatus.IDLE))
    with pytest.raises(RouteError):
        check_route(hb_topic, Ack(task_id="t", status=AckStatus.MERGED))
    with pytest.raises(RouteError):  # a refusal rides the heartbeat topic, nothing else
        check_route(ack_topic, ErrorMessage(code=ErrorCode.BUDGET_EXHAUSTED, detail="t1"))
    with pytest.raises(RouteError):
        check_route(model, ModelDownload(model_version=5, subset_id="small", names=("w",)))
