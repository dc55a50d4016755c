//! Keys, values and layer files.
