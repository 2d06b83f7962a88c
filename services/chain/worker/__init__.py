"""The Faust worker (`whaleid serve worker`): sightings.uploaded -> S3, validate, crop, Triton -> sightings.embedded."""
