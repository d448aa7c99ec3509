"""HTML pages for people: the batch-run gallery and the endpoint's prompt playground (self-contained, no CDN)."""
