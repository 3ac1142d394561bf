"""Publishes articles to the RabbitMQ queue `es_index_update` with pika,
RabbitMQ's stock Python client, as the integration guide's (Node.js)
producer does.

    python3 examples/search/producer.py                     # the guide's one article
    python3 examples/search/producer.py --reindex 10000     # a reindex job: 10000 articles
    python3 examples/search/producer.py --message '{"title": "New Article", "deleted": true}'
"""
import argparse
import json

import pika


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--queue", default="es_index_update")
    parser.add_argument("--reindex", type=int, default=0, help="send a reindex job of this many articles")
    parser.add_argument("--message", help="send this one payload as it is")
    args = parser.parse_args()

    if args.message:
        messages = [args.message]
    elif args.reindex:
        messages = [
            json.dumps({"id": f"a{i}", "title": f"Article {i}", "content": f"body of article {i} in the reindex job"})
            for i in range(args.reindex)
        ]
    else:
        messages = [json.dumps({"title": "New Article", "content": "This is the content of the new article"})]

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    # As the guide declares it (`durable: false`); the host declares it the same way.
    channel.queue_declare(queue=args.queue)
    channel.confirm_delivery()
    for body in messages:
        channel.basic_publish(exchange="", routing_key=args.queue, body=body)
    connection.close()
    print(f" [x] Sent {len(messages)} message(s) to {args.queue}")


if __name__ == "__main__":
    main()
