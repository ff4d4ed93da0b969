"""Wire formats (pure): the intake envelope, committed-event messages, outcome notifications and
rejection records, with their codecs. Non-Python clients speak these (see docs/wire-format.md)."""
