//! Durable job store for skill-fleet (being built).
