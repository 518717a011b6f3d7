"""The administrator's tools beside the relay: rule regression tests over a corpus."""
