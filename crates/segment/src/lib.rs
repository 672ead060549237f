//! Segment HTTP tracking spec → Chorus event inputs (placeholder, being written).
