"""What every stage of the streaming chain shares: retries and backoff, dead letters and permanent failures
(failures.py), Redis markers and records (markers.py), the stage base with at-least-once batches (stage.py), the
Faust app factory (faust_app.py) and its recovery from a reset topic (topic_resets.py), and the Kafka producer
that survives a broker restart (kafka_producers.py). Stage packages (bridge, worker, matcher, reconciler,
webhooks, gateway) import from here, never from each other."""
