"""Learner → sampler weights: the wire format both sides share (`wire`), and the transports that move it
(`transports`: object store, collective broadcast, CUDA IPC) behind one driver-side interface."""
