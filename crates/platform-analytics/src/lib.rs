//! platform-analytics (in progress)
