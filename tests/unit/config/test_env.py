"""Settings that name several nodes: RabbitMQ failover lists and Redis Sentinels."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection

from config.env import broker_urls, celery_redis_url, channel_layer_host, redis_sentinels

CLUSTER = "amqp://u:p@mq1:5672//;amqp://u:p@mq2:5672//;amqp://u:p@mq3:5672//"
SENTINELS = [("10.0.0.5", 26379), ("10.0.0.6", 26379), ("10.0.0.7", 26379)]


def test_a_cluster_url_is_one_url_per_node() -> None:
    assert broker_urls(CLUSTER) == ["amqp://u:p@mq1:5672//", "amqp://u:p@mq2:5672//", "amqp://u:p@mq3:5672//"]
    assert broker_urls("amqp://u:p@mq1:5672//") == ["amqp://u:p@mq1:5672//"]


def test_kombu_fails_over_through_the_nodes_in_order() -> None:
    connection = Connection(CLUSTER)

    hosts = [connection.hostname]
    for _ in range(3):
        connection.maybe_switch_next()
        hosts.append(connection.hostname)

    assert hosts == ["mq1", "mq2", "mq3", "mq1"]


def test_sentinels_are_host_and_port() -> None:
    assert redis_sentinels(["10.0.0.5:26379", " 10.0.0.6:26379", "10.0.0.7:26379"]) == SENTINELS
    assert redis_sentinels([]) == redis_sentinels([""]) == []


@pytest.mark.parametrize("wrong", ["10.0.0.5", "10.0.0.5:port", ":26379"])
def test_a_sentinel_without_a_port_is_refused_with_an_example(wrong: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="host:port"):
        redis_sentinels([wrong])


def test_the_background_broker_goes_through_every_sentinel_keeping_database_and_password() -> None:
    assert celery_redis_url("redis://:secret@ignored:6379/2", SENTINELS) == (
        "sentinel://:secret@10.0.0.5:26379/2;sentinel://:secret@10.0.0.6:26379/2;"
        "sentinel://:secret@10.0.0.7:26379/2"
    )


def test_without_sentinels_every_redis_setting_is_the_url_itself() -> None:
    assert celery_redis_url("redis://127.0.0.1:6379/0", []) == "redis://127.0.0.1:6379/0"
    assert channel_layer_host("redis://127.0.0.1:6379/0", [], "carillon") == "redis://127.0.0.1:6379/0"


def test_the_channel_layer_asks_the_sentinels_for_the_primary() -> None:
    assert channel_layer_host("redis://:secret@ignored:6379/4", SENTINELS, "carillon") == {
        "master_name": "carillon", "sentinels": SENTINELS, "db": 4, "password": "secret",
    }
