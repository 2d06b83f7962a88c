"""Who may do and see what: credentials (bearer tokens -> role and name; credentials.py) and their policy in
production (token_policy.py), what each role sees of a sighting (visibility.py), and CORS for browser apps, with
the matching S3 bucket rule (cors.py). Used by the gateway, the webhooks (an app's own sightings) and the
embedded stack (the bucket rule)."""
