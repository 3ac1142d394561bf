"""Produces to Kafka with confluent-kafka, Kafka's stock Python client (on
librdkafka), as the integration guide's producer does.

    python3 examples/db/producer.py                        # the guide's one record, to db_insert
    python3 examples/db/producer.py --records 1000          # 1000 CSV records
    python3 examples/db/producer.py --events changes.jsonl # change events, one JSON per line, to db_sync

Change events are keyed by their row id, so the events of one row stay in
order on one partition.
"""
import argparse
import json

from confluent_kafka import Producer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--insert-topic", default="db_insert")
    parser.add_argument("--sync-topic", default="db_sync")
    parser.add_argument("--records", type=int, default=0, help="send this many CSV records")
    parser.add_argument("--events", help="a file of change events, one JSON object per line")
    args = parser.parse_args()

    producer = Producer({"bootstrap.servers": args.brokers})
    sent = 0
    if args.events:
        with open(args.events) as events:
            for line in events:
                if line.strip():
                    event = json.loads(line)
                    producer.produce(args.sync_topic, key=str(event["id"]), value=line.strip())
                    sent += 1
    elif args.records:
        cities = ["New York", "Oslo", "Lima", "Osaka"]
        for i in range(args.records):
            producer.produce(args.insert_topic, value=f"user{i},{20 + i % 60},{cities[i % len(cities)]}")
            sent += 1
            producer.poll(0)
    else:
        producer.produce(args.insert_topic, value="user1,25,New York")
        sent = 1
    left = producer.flush(30)
    if left:
        raise SystemExit(f"{left} of {sent} messages were not delivered")
    print(f" [x] Sent {sent} message(s)")


if __name__ == "__main__":
    main()
