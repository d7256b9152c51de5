//! Offline demo (being written).
