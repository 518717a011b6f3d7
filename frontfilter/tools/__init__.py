"""The administrator's tools beside the relay: `corpus` (`frontfilter test`, rule regression
tests), `queuectl` (`frontfilter queue`), `sink` (`frontfilter sink`, a stand-in backend)."""
