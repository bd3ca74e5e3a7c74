//! platform-db (in progress)
