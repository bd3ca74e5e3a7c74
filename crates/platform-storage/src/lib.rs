//! platform-storage (in progress)
