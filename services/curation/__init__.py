"""Curating the catalogue: importing a catalogue and building its gallery (catalogue/), confirmations, identity
edits, reindex and the model store (operations/)."""
