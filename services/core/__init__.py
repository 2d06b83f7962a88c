"""What every part of the system shares and which imports nothing else of it: settings, Kafka topics, Redis keys,
errors, imaging, metrics, checksums, ids, the export signature between training and serving, who may do and see
what (access/), and the identification core (identification/: numpy and faiss only)."""
