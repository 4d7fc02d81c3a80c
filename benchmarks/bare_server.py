"""The fan-out baseline: a bare `websockets` server that subscribes once to a Redis channel
and `broadcast()`s each message to every connection. No topics, no auth, no history: the
floor a Python server on this machine can reach for the same work.

    python -m benchmarks.bare_server --port 9000 --redis-url redis://127.0.0.1:6379/0 --channel c
"""

import argparse
import asyncio
import json
import resource

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def serve_broadcast(*, port: int, redis_url: str, channel: str) -> None:
    connections: set[ServerConnection] = set()
    subscribed = json.dumps({"type": "subscribed"})

    async def handler(connection: ServerConnection) -> None:
        connections.add(connection)
        try:
            await connection.send(subscribed)
            async for _ in connection:  # the client's subscribe frame, pings: nothing to do
                pass
        finally:
            connections.discard(connection)

    async def forward() -> None:
        pubsub = aioredis.Redis.from_url(redis_url).pubsub()
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(connections, message["data"].decode())

    async with serve(handler, "127.0.0.1", port, backlog=4096, compression=None):
        await forward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve_broadcast(port=args.port, redis_url=args.redis_url, channel=args.channel))


if __name__ == "__main__":
    main()
