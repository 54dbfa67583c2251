//! Streaming aggregator for skill-fleet (being built).
