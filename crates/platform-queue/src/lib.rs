//! platform-queue (in progress)
