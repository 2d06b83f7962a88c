"""The researcher's catalogue: import existing identities (`whaleid catalogue import`), store their
photos and records in S3 (`store`), and build a gallery version from them (`gallery_build`, also the demo's)."""
