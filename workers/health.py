"""Container healthcheck for one worker replica (`python -m workers.health`): healthy while a
worker on this host polls its task queue. Temporal names each poller `pid@hostname`, and a
container's hostname is its own, so every replica answers for itself."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from refloop.config import Settings

RECENT = 180  # seconds; a long poll lasts about a minute before it is renewed


async def polling_here(client: Client, task_queue: str, host: str | None = None) -> bool:
    host = host or socket.gethostname()
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    now = time.time()
    return any(p.identity.endswith("@" + host) and now - p.last_access_time.seconds < RECENT for p in resp.pollers)


async def check(settings: Settings) -> bool:
    from refloop.temporal import connect

    client = await connect(settings.temporal_address, settings.namespace)
    return await polling_here(client, settings.task_queue)


def main() -> int:
    settings = Settings()
    try:
        ok = asyncio.run(asyncio.wait_for(check(settings), 8))
    except Exception as err:  # unreachable server, timeout: unhealthy, and say why
        print(f"unhealthy: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: no worker on this host polls task queue {settings.task_queue!r}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
