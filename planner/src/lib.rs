//! Block placement planner (placeholder; see seed 003).
