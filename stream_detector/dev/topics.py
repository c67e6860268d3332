"""Create the stack's topics with their partitions and retention, for brokers without Kafka's
own scripts (the CI stand-in of compose's kafka-init; docker-compose.yml's kafka-topics.sh
script creates the same set). Idempotent: existing topics are left as they are.

    python -m stream_detector.dev.topics --bootstrap kafka:19092 [--events-partitions 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from stream_detector.config import Settings
from stream_detector.topics import deployment_topics, ensure_topics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_detector.dev.topics", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--events-partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the broker to answer")
    args = parser.parse_args(argv)
    if args.events_partitions < 1:
        parser.error("--events-partitions must be at least 1")
    from aiokafka.errors import KafkaError

    specs = deployment_topics(Settings.from_env(), args.events_partitions, output_partitions=4)
    try:
        counts = asyncio.run(ensure_topics(args.bootstrap, {t.name: t.partitions for t in specs}, args.timeout,
                                           configs={t.name: t.configs for t in specs}))
    except (OSError, RuntimeError, TimeoutError, KafkaError) as e:
        print(f"topics: {e}", file=sys.stderr)
        return 1
    for s in specs:
        print(f"topic {s.name} partitions {counts[s.name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
