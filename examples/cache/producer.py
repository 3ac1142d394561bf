"""Publishes product changes to the RabbitMQ queue `cache_update` with pika,
RabbitMQ's stock Python client, as the integration guide's producer does.

    python3 examples/cache/producer.py                      # the guide's one message
    python3 examples/cache/producer.py --changes 40 --versions 5   # versioned changes, shuffled and each sent twice
    python3 examples/cache/producer.py --warmup 10          # fill the cache with the 10 hottest products

With --changes, product p (from --first on) gets versions 1..V named
"product p v<version>", and every fifth product is then deleted at version
V+1; the messages go out in a shuffled order, each twice, as a broker's
redeliveries might bring them. The cache must end holding version V of each
product (and the deletion of every fifth), whatever the order.
"""
import argparse
import json
import random

import pika


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--queue", default="cache_update")
    parser.add_argument("--changes", type=int, default=0, help="products to send versioned changes for")
    parser.add_argument("--first", type=int, default=101, help="the first product id of --changes")
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7, help="of the shuffle")
    parser.add_argument("--warmup", type=int, default=0, help="send a warm-up for this many products")
    parser.add_argument("--message", help="send this one payload as it is")
    args = parser.parse_args()

    messages = []
    if args.message:
        messages.append(args.message)
    elif args.warmup:
        messages.append(json.dumps({"warmup": True, "limit": args.warmup}))
    elif args.changes:
        for p in range(args.first, args.first + args.changes):
            for v in range(1, args.versions + 1):
                messages.append(json.dumps({"product_id": p, "product_name": f"product {p} v{v}", "version": v}))
            if p % 5 == 0:
                messages.append(json.dumps({"product_id": p, "deleted": True, "version": args.versions + 1}))
        messages = messages * 2
        random.Random(args.seed).shuffle(messages)
    else:
        messages.append('{"product_id": 1, "product_name": "New Product"}')

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    # As the guide declares it; the host declares it the same way.
    channel.queue_declare(queue=args.queue)
    channel.confirm_delivery()
    for body in messages:
        channel.basic_publish(exchange="", routing_key=args.queue, body=body)
    connection.close()
    print(f" [x] Sent {len(messages)} cache update message(s) to {args.queue}")


if __name__ == "__main__":
    main()
