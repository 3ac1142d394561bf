"""Microservice A of the events scenario, with nats-py, NATS's stock Python
client. By default it sends the integration guide's message, as the
guide's Go producer does:

    python3 examples/events/producer.py                      # "New event occurred" on serviceB.event
    python3 examples/events/producer.py --register 20        # 20 user registrations, as JSON
    python3 examples/events/producer.py --profile 7          # ask the profile service, print its reply

JetStream keeps what is published on `serviceB.>` (the example's host
creates the stream), so a registration published while no host runs is
handled when one starts.
"""
import argparse
import asyncio
import json

import nats


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--subject", default="serviceB.event")
    parser.add_argument("--profile-subject", default="profile.get")
    parser.add_argument("--register", type=int, default=0, help="send this many registrations")
    parser.add_argument("--first", type=int, default=1, help="the first registration's user id")
    parser.add_argument("--profile", help="request the profile of this user id and print the reply")
    args = parser.parse_args()

    nc = await nats.connect(args.url)
    if args.profile is not None:
        user_id = int(args.profile) if args.profile.isdigit() else args.profile
        reply = await nc.request(args.profile_subject, json.dumps({"user_id": user_id}).encode(), timeout=10)
        print(reply.data.decode())
    elif args.register:
        js = nc.jetstream()
        for user_id in range(args.first, args.first + args.register):
            event = {"type": "user.registered", "user_id": user_id, "name": f"user {user_id}",
                     "email": f"user{user_id}@example.com"}
            # Through JetStream, so the server confirms it has the event.
            await js.publish(args.subject, json.dumps(event).encode())
        print(f" [x] Sent {args.register} registration(s)")
    else:
        await nc.publish(args.subject, b"New event occurred")
        await nc.flush()
        print("Message sent to service B")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
