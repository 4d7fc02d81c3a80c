"""Which local connections follow which topic, and where each stands in it: the hub's table.

Pure on purpose: no Redis, no awaiting. Every decision about a subscription (whether Redis
must be (un)subscribed, whether a live message is delivered, held or reveals a gap, what a
connection missed after a drop) is taken here from plain values, so it can be tested
without a server. The hub (realtime/hub.py) carries the decisions out: it reads the
history, awaits the connections, and talks to Redis through realtime/pubsub.py.

The promise kept here (docs/realtime.md, "History, resume and resync"): a connection gets
every message of a topic once, in id order, or is told `resync`; never a silent gap.
Pub/sub is not trusted to be complete, so a subscription remembers the last id it was
given and compares each live message with it.
"""

import enum
import logging
from typing import Protocol

from realtime.frames import Control, Delivery, Frame
from realtime.history import HistoryRead
from realtime.topics import Topic

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A connection as the hub sees it: it takes frames without waiting."""

    def offer(self, frame: Frame) -> None: ...

    async def put(self, frame: Frame) -> None:
        """Queue a frame, waiting for room: replays pace themselves on the client."""


class Subscription:
    """One connection's subscription to one topic, and where it stands in that topic."""

    __slots__ = ("sink", "topic", "last_id", "replaying", "pending", "closed", "announced", "again")

    def __init__(self, sink: Sink, topic: Topic, last_id: int | None) -> None:
        self.sink = sink
        self.topic = topic
        # None: start at whatever is latest once the Redis subscription is confirmed.
        self.last_id = last_id
        # While replaying, live messages wait in `pending` so that they follow the replay.
        self.replaying = True
        self.pending: list[Delivery] = []
        self.closed = False
        self.announced = False
        # Something arrived during a history read that the read may not cover (a new gap,
        # more held messages than fit): read once more before going live.
        self.again = False


class Join(enum.Enum):
    """What the hub must do for a new subscription."""

    # First follower of the topic here: subscribe in Redis; its confirmation starts the
    # catch-up (a history read before it could miss what is published in between).
    SUBSCRIBE_UPSTREAM = "subscribe_upstream"
    # The Redis subscription is under way: its confirmation starts the catch-up.
    AWAIT_CONFIRMATION = "await_confirmation"
    CATCH_UP = "catch_up"
    # Already live from the latest id this process knows: no history read.
    LIVE = "live"


class SubscriptionTable:
    """`topic -> local subscriptions` of one process, and what each has been given."""

    def __init__(self, *, pending_limit: int) -> None:
        self._followers: dict[Topic, set[Subscription]] = {}
        # Topics whose Redis subscription is confirmed: from then on pub/sub carries them.
        self._confirmed: set[Topic] = set()
        # The highest id this process has seen per followed topic (from pub/sub or history).
        self._latest: dict[Topic, int] = {}
        # Live messages held per replaying subscription at most: past it, history holds
        # them anyway (it keeps as many), so the subscription reads history once more.
        self._pending_limit = pending_limit
        # Messages handed to connections (live and replayed), for the process's metrics.
        self.delivered = 0

    def follows(self, topic: Topic) -> bool:
        """Whether any local connection follows `topic` (Redis must stay subscribed)."""
        return topic in self._followers

    def followers(self, topic: Topic) -> frozenset[Subscription]:
        return frozenset(self._followers.get(topic, ()))

    # --- following and leaving ---------------------------------------------------------

    def follow(self, sink: Sink, topic: Topic, last_id: int | None) -> tuple[Subscription, Join]:
        """Add `sink` as a follower of `topic` from after `last_id` (None: from now)."""
        subscription = Subscription(sink, topic, last_id)
        followers = self._followers.get(topic)
        if followers is None:
            self._followers[topic] = {subscription}
            return subscription, Join.SUBSCRIBE_UPSTREAM
        followers.add(subscription)
        if topic not in self._confirmed:
            return subscription, Join.AWAIT_CONFIRMATION
        latest = self._latest.get(topic)
        if latest is not None and last_id in (None, latest):
            # From now (or from exactly now: an SSE stream reads its start positions
            # first) on a topic followed here: no history read, so a reconnect storm to one
            # room costs no Redis round trip per connection. Anything pub/sub lost past
            # `latest` shows up as a gap and is read from history then.
            subscription.last_id = latest
            self._go_live(subscription)
            return subscription, Join.LIVE
        return subscription, Join.CATCH_UP

    def unfollow(self, subscription: Subscription) -> bool:
        """Remove `subscription`; True when it was the topic's last follower here, so
        Redis should be unsubscribed."""
        subscription.closed = True
        topic = subscription.topic
        followers = self._followers.get(topic)
        if followers is None:
            return False
        followers.discard(subscription)
        if followers:
            return False
        del self._followers[topic]
        self._confirmed.discard(topic)
        self._latest.pop(topic, None)
        return True

    def confirmed(self, topic: Topic) -> frozenset[Subscription]:
        """Redis confirmed its subscription to `topic` (the first time, or again after a
        reconnect, when pub/sub may have lost messages meanwhile): the followers that must
        catch up from history now, each held until it has."""
        followers = self._followers.get(topic)
        if followers is None:
            return frozenset()
        self._confirmed.add(topic)
        for subscription in followers:
            self.hold(subscription)
        return frozenset(followers)

    def known_latest(self, topics: list[Topic]) -> dict[Topic, int]:
        """Where the topics that this process follows stand, as far as it knows."""
        return {
            topic: self._latest[topic]
            for topic in topics
            if topic in self._latest and topic in self._confirmed
        }

    # --- the live path -----------------------------------------------------------------

    def route(self, topic: Topic, delivery: Delivery) -> list[Subscription]:
        """Hand a live message to the topic's followers without waiting; return those that
        found a gap before it (pub/sub lost something): the hub fills it from history."""
        followers = self._followers.get(topic)
        if not followers:
            return []
        if delivery.id > self._latest.get(topic, 0):
            self._latest[topic] = delivery.id
        gaps: list[Subscription] = []
        for subscription in followers:
            if subscription.replaying:
                if len(subscription.pending) < self._pending_limit:
                    subscription.pending.append(delivery)
                else:
                    subscription.again = True
                continue
            last_id = subscription.last_id or 0
            if delivery.id <= last_id:
                continue  # already given (replay and live overlap at the seam)
            if delivery.id == last_id + 1:
                subscription.last_id = delivery.id
                subscription.sink.offer(delivery)
                self.delivered += 1
                continue
            # Held until history has filled the gap before it.
            subscription.pending.append(delivery)
            self.hold(subscription)
            gaps.append(subscription)
        return gaps

    # --- catching up from history ------------------------------------------------------

    def hold(self, subscription: Subscription) -> None:
        """Hold live messages for `subscription` until a catch-up lets it go live; a
        catch-up already under way reads history once more."""
        subscription.replaying = True
        subscription.again = True

    def reading(self, subscription: Subscription) -> None:
        """A history read for `subscription` starts: only what asks for a catch-up from
        now on calls for another read."""
        subscription.again = False

    def missed(self, subscription: Subscription, read: HistoryRead) -> list[Frame]:
        """What `subscription` must be sent, in order, after history answered `read`: the
        messages after its last id, or a `resync` when history no longer holds every one of
        them (older than the window, or ahead of the topic's counter because Redis lost its
        data). A subscription from now just starts at the latest id."""
        last_id = subscription.last_id
        if last_id is None:
            subscription.last_id = read.latest_id
            return []
        # A range, never a list: after a failover the counter jumps by 2**32 (realtime/history.py).
        missing = range(last_id + 1, read.latest_id + 1)
        messages = [message for message in read.messages if message["id"] > last_id]
        if last_id <= read.latest_id and len(messages) == len(missing) and all(
            message["id"] == expected for message, expected in zip(messages, missing, strict=False)
        ):
            return [Delivery(message) for message in messages]
        logger.info("%s: last id %s is past the history window: resync", subscription.topic, last_id)
        subscription.last_id = read.latest_id
        return [Control("resync", {"topic": str(subscription.topic), "id": read.latest_id})]

    def follow_on(self, subscription: Subscription) -> tuple[list[Delivery], bool]:
        """Take the held live messages: those that follow on from the last id, in order,
        and False when they stop at a gap (history has the rest)."""
        pending, subscription.pending = subscription.pending, []
        run: list[Delivery] = []
        next_id = (subscription.last_id or 0) + 1
        for delivery in sorted(pending, key=lambda d: d.id):
            if delivery.id < next_id:
                continue
            if delivery.id != next_id:
                return run, False
            run.append(delivery)
            next_id += 1
        return run, True

    def replayed(self, subscription: Subscription, frame: Frame) -> None:
        """`frame` of a catch-up is being sent to the subscription: it stands after it."""
        if isinstance(frame, Delivery):
            subscription.last_id = frame.id
            self.delivered += 1

    def go_live(self, subscription: Subscription) -> bool:
        """End a catch-up: live messages go straight to the connection again. False when
        something arrived meanwhile that calls for another history read."""
        if subscription.again:
            return False
        if subscription.last_id is not None and subscription.topic in self._followers:
            latest = self._latest.get(subscription.topic, 0)
            self._latest[subscription.topic] = max(latest, subscription.last_id)
        self._go_live(subscription)
        return True

    def _go_live(self, subscription: Subscription) -> None:
        subscription.replaying = False
        if not subscription.announced:
            # Tells the client the subscription is live and from which id.
            subscription.announced = True
            subscription.sink.offer(
                Control("subscribed", {"topic": str(subscription.topic), "id": subscription.last_id})
            )
