"""Kafka plumbing of the benchmark: topics, loading posts, the raw consume baseline."""
from __future__ import annotations

import itertools
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

POSTS_PER_MESSAGE = 500  # what our producer packs into one Kafka message


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, mark: str) -> None:
    """Delete every topic whose name contains mark (a namespace, or an anchor's topic with its
    Faust/Quix internal topics)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if mark in t]
        if names:
            await admin.delete_topics(names)
    except Exception:
        pass
    finally:
        await admin.close()


def route(posts: list[dict], partitions: int) -> dict[int, list[dict]]:
    """Posts per partition by murmur2(platform:post_id), as our producer routes them."""
    out: dict[int, list[dict]] = {p: [] for p in range(partitions)}
    for post in posts:
        key = f"{post['platform']}:{post['post_id']}".encode()
        out[(murmur2(key) & 0x7FFFFFFF) % partitions].append(post)
    return out


def batch_messages(routed: dict[int, list[dict]], per_message: int = POSTS_PER_MESSAGE) -> list[tuple[int, bytes]]:
    """(partition, JSON array of posts) in arrival order per partition, the partitions taking turns
    (as a producer's do), so no partition's first posts wait for the whole of another's."""
    per_partition = [[(p, orjson.dumps(posts[i:i + per_message])) for i in range(0, len(posts), per_message)]
                     for p, posts in routed.items()]
    return [message for turn in itertools.zip_longest(*per_partition) for message in turn if message is not None]


async def load(bootstrap: str, topics: list[str], messages: list[tuple[int, bytes]]) -> float:
    """Write the messages to every topic; returns seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=1 << 20, max_request_size=4 << 20,
                                compression_type=None)
    await producer.start()
    start = time.perf_counter()
    try:
        for topic in topics:
            pending = []
            for p, value in messages:
                pending.append(await producer.send(topic, value, partition=p))
                if len(pending) >= 2000:
                    for f in pending:
                        await f
                    pending = []
            for f in pending:
                await f
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - start


async def load_singles(bootstrap: str, topic: str, posts: list[dict], key_field: str | None = None) -> None:
    """One post per message (the naive pattern's input), keyed by platform:post_id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        pending = []
        for post in posts:
            key = f"{post['platform']}:{post['post_id']}".encode()
            pending.append(await producer.send(topic, orjson.dumps(post), key=key))
            if len(pending) >= 5000:
                for f in pending:
                    await f
                pending = []
        for f in pending:
            await f
    finally:
        await producer.stop()


async def raw_consume_rate(bootstrap: str, topic: str, posts_per_message: float) -> dict:
    """Read the whole topic with plain aiokafka getmany (no decoding): the ceiling for any consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        seen = nbytes = 0
        start = time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                seen += len(records)
                for r in records:
                    nbytes += len(r.value)
        seconds = time.perf_counter() - start
    finally:
        await consumer.stop()
    return {"messages": seen, "seconds": round(seconds, 3), "messages_per_s": round(seen / seconds),
            "posts_per_s": round(seen * posts_per_message / seconds), "mb_per_s": round(nbytes / seconds / 1e6, 1)}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:  # the group or its coordinator does not exist yet
        return {}
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group; ("", 0) while it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    except KafkaError:
        return "", 0
    finally:
        await admin.close()
    for response in responses:
        for _error, name, state, _protocol_type, _protocol, members, *_ in response.groups:
            if name == group:
                return state, len(members)
    return "", 0
