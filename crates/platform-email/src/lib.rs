//! platform-email (in progress)
