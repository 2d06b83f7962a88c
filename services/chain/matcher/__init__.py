"""The matcher (`whaleid serve matcher`): sightings.embedded -> gallery ranking -> Redis + identifications topics."""
