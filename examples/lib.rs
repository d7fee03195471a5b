//! Example package: the examples live in the `[[example]]` targets.
