"""The hub's subscription table on its own: no Redis, no event loop.

The history is a list standing in for realtime/history.py's reads, and `catch_up` below
does what the hub does with a subscription that must catch up, its awaits taken out.
"""

from collections.abc import Sequence

from realtime.frames import Delivery, Frame
from realtime.history import HistoryRead, Message
from realtime.subscriptions import Join, Subscription, SubscriptionTable
from realtime.topics import Topic
from tests.unit.realtime.conftest import RecordingSink

LOBBY = Topic("room", "lobby")
OTHER = Topic("room", "other")


class History:
    """A topic's history: every message published, of which the last `keep` are held."""

    def __init__(self, topic: Topic, *, keep: int = 1000) -> None:
        self.topic = topic
        self.keep = keep
        self.messages: list[Message] = []

    def publish(self) -> Delivery:
        number = len(self.messages) + 1
        message: Message = {"topic": str(self.topic), "id": number, "ts": 0, "event": "e", "data": {}}
        self.messages.append(message)
        return Delivery(message)

    def since(self, last_id: int | None) -> HistoryRead:
        latest = len(self.messages)
        if last_id is None:
            return HistoryRead([], latest)
        return HistoryRead([m for m in self.messages[-self.keep :] if m["id"] > last_id], latest)


def catch_up(table: SubscriptionTable, subscription: Subscription, history: History) -> None:
    """The hub's catch-up loop, synchronously: read history, send what was missed, then
    the live messages held meanwhile; again until nothing is left to read."""

    def send(frames: Sequence[Frame]) -> None:
        for frame in frames:
            table.replayed(subscription, frame)
            subscription.sink.offer(frame)

    while True:
        table.reading(subscription)
        send(table.missed(subscription, history.since(subscription.last_id)))
        complete = True
        while subscription.pending and complete:
            run, complete = table.follow_on(subscription)
            send(run)
        if complete and table.go_live(subscription):
            return


def live(
    table: SubscriptionTable, sink: RecordingSink, topic: Topic, history: History, last_id: int | None = None
) -> Subscription:
    """A subscription that has caught up and receives live messages."""
    subscription, join = table.follow(sink, topic, last_id)
    if join is Join.SUBSCRIBE_UPSTREAM:
        table.confirmed(topic)
    if join is not Join.LIVE:
        catch_up(table, subscription, history)
    return subscription


def table() -> SubscriptionTable:
    return SubscriptionTable(pending_limit=1000)


def test_redis_is_subscribed_for_the_first_follower_and_unsubscribed_after_the_last() -> None:
    hub = table()
    first, join_first = hub.follow(RecordingSink(), LOBBY, None)
    second, join_second = hub.follow(RecordingSink(), LOBBY, None)

    assert (join_first, join_second) == (Join.SUBSCRIBE_UPSTREAM, Join.AWAIT_CONFIRMATION)
    assert hub.unfollow(first) is False
    assert hub.follows(LOBBY)
    assert hub.unfollow(second) is True
    assert not hub.follows(LOBBY)
    assert hub.unfollow(second) is False  # a second release of the same subscription
    assert hub.follow(RecordingSink(), LOBBY, None)[1] is Join.SUBSCRIBE_UPSTREAM


def test_two_connections_on_one_topic_share_its_redis_subscription_and_each_get_every_message() -> None:
    hub, history = table(), History(LOBBY)
    history.publish()
    sinks = [RecordingSink(), RecordingSink()]
    subscriptions = [live(hub, sink, LOBBY, history) for sink in sinks]

    assert hub.followers(LOBBY) == frozenset(subscriptions)
    for _ in range(2):
        assert hub.route(LOBBY, history.publish()) == []
    assert [sink.seen() for sink in sinks] == [[("subscribed", 1), ("message", 2), ("message", 3)]] * 2


def test_a_follower_from_now_on_a_topic_live_here_needs_no_history_read() -> None:
    hub, history = table(), History(LOBBY)
    live(hub, RecordingSink(), LOBBY, history)
    hub.route(LOBBY, history.publish())
    late = RecordingSink()

    _, join = hub.follow(late, LOBBY, None)

    assert join is Join.LIVE
    assert late.seen() == [("subscribed", 1)]
    assert hub.known_latest([LOBBY, OTHER]) == {LOBBY: 1}


def test_after_the_last_follower_left_the_table_forgets_where_the_topic_stood() -> None:
    """A later first follower must not start from an id pub/sub may have moved past."""
    hub, history = table(), History(LOBBY)
    subscription = live(hub, RecordingSink(), LOBBY, history)
    hub.route(LOBBY, history.publish())
    hub.unfollow(subscription)

    _, join = hub.follow(RecordingSink(), LOBBY, None)
    hub.confirmed(LOBBY)

    assert join is Join.SUBSCRIBE_UPSTREAM
    assert hub.known_latest([LOBBY]) == {}


def test_a_message_goes_only_to_the_followers_of_its_topic() -> None:
    hub, lobby, other = table(), History(LOBBY), History(OTHER)
    follower, bystander, gone = RecordingSink(), RecordingSink(), RecordingSink()
    live(hub, follower, LOBBY, lobby)
    live(hub, bystander, OTHER, other)
    hub.unfollow(live(hub, gone, LOBBY, lobby))

    hub.route(LOBBY, lobby.publish())

    assert follower.seen() == [("subscribed", 0), ("message", 1)]
    assert bystander.seen() == [("subscribed", 0)]
    assert gone.seen() == [("subscribed", 0)]


def test_a_gap_that_history_still_holds_is_filled_in_order_and_without_repeats() -> None:
    hub, history = table(), History(LOBBY)
    sink = RecordingSink()
    subscription = live(hub, sink, LOBBY, history)
    hub.route(LOBBY, history.publish())
    history.publish()  # 2 and 3: lost by pub/sub
    history.publish()

    gaps = hub.route(LOBBY, history.publish())
    hub.route(LOBBY, history.publish())  # 5, while 4 waits for the gap before it
    assert gaps == [subscription]
    assert sink.seen() == [("subscribed", 0), ("message", 1)]
    catch_up(hub, subscription, history)
    hub.route(LOBBY, history.publish())

    assert sink.seen() == [("subscribed", 0)] + [("message", n) for n in range(1, 7)]


def test_resuming_from_an_id_history_still_holds_replays_what_followed_it() -> None:
    hub, history = table(), History(LOBBY)
    for _ in range(5):
        history.publish()
    sink = RecordingSink()

    live(hub, sink, LOBBY, history, last_id=3)

    assert sink.seen() == [("message", 4), ("message", 5), ("subscribed", 5)]


def test_a_gap_older_than_history_is_a_resync_to_the_latest_id() -> None:
    hub, history = table(), History(LOBBY, keep=3)
    sink = RecordingSink()
    subscription = live(hub, sink, LOBBY, history)
    hub.route(LOBBY, history.publish())
    for _ in range(8):
        history.publish()  # 2 to 9 lost by pub/sub; history keeps only 8 to 10

    gaps = hub.route(LOBBY, history.publish())
    catch_up(hub, subscription, history)
    hub.route(LOBBY, history.publish())

    assert gaps == [subscription]
    assert sink.seen() == [("subscribed", 0), ("message", 1), ("resync", 10), ("message", 11)]


def test_an_id_ahead_of_the_topic_is_a_resync_redis_lost_its_data() -> None:
    hub, history = table(), History(LOBBY)
    history.publish()
    sink = RecordingSink()

    live(hub, sink, LOBBY, history, last_id=40)

    assert sink.seen() == [("resync", 1), ("subscribed", 1)]


def test_live_messages_during_a_catch_up_follow_it_once() -> None:
    """Redis confirmed the subscription (again): the followers catch up from history while
    pub/sub goes on, and the seam between the two repeats nothing."""
    hub, history = table(), History(LOBBY)
    sink = RecordingSink()
    subscription = live(hub, sink, LOBBY, history)
    hub.route(LOBBY, history.publish())
    history.publish()  # lost while Redis was away

    assert hub.confirmed(LOBBY) == frozenset([subscription])
    for _ in range(2):
        assert hub.route(LOBBY, history.publish()) == []  # held: the catch-up sends them
    assert sink.seen() == [("subscribed", 0), ("message", 1)]
    catch_up(hub, subscription, history)

    assert sink.seen() == [("subscribed", 0)] + [("message", n) for n in range(1, 5)]


def test_more_live_messages_than_can_be_held_are_read_from_history_instead() -> None:
    hub, history = SubscriptionTable(pending_limit=2), History(LOBBY)
    sink = RecordingSink()
    subscription = live(hub, sink, LOBBY, history)
    hub.confirmed(LOBBY)
    for _ in range(5):
        hub.route(LOBBY, history.publish())

    assert len(subscription.pending) == 2
    catch_up(hub, subscription, history)

    assert sink.seen() == [("subscribed", 0)] + [("message", n) for n in range(1, 6)]


def test_messages_handed_to_connections_are_counted_live_and_replayed() -> None:
    hub, history = table(), History(LOBBY)
    history.publish()
    live(hub, RecordingSink(), LOBBY, history, last_id=0)
    live(hub, RecordingSink(), LOBBY, history)

    hub.route(LOBBY, history.publish())

    assert hub.delivered == 3
